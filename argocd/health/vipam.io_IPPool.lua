-- Argo CD health of vipam.io/IPPool, from the status the vipam controller writes:
--   Progressing  no status yet, or status.observedGeneration behind metadata.generation
--   Degraded     condition Conflict=True (overlaps another pool) or Ready=False (invalid blocks)
--   Healthy      Ready=True
local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the vipam controller to report on the pool"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the vipam controller to observe generation " .. tostring(generation)
  return hs
end
local ready = nil
local conflict = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    elseif condition.type == "Conflict" then
      conflict = condition
    end
  end
end
if conflict ~= nil and conflict.status == "True" then
  hs.status = "Degraded"
  hs.message = "Conflict (" .. tostring(conflict.reason) .. "): " .. tostring(conflict.message)
  return hs
end
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "waiting for the vipam controller to report on the pool"
  return hs
end
if ready.status == "False" then
  hs.status = "Degraded"
  hs.message = tostring(ready.reason) .. ": " .. tostring(ready.message)
  return hs
end
hs.status = "Healthy"
if status.capacity ~= nil and status.allocated ~= nil and status.available ~= nil then
  hs.message = status.allocated .. " of " .. status.capacity .. " addresses allocated, " ..
    status.available .. " available"
else
  hs.message = tostring(ready.message)
end
if obj.spec ~= nil and obj.spec.disabled == true then
  hs.message = hs.message .. " (disabled: no new allocations)"
end
return hs

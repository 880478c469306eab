-- Optional override of Argo CD's built-in Service health (it replaces it for every Service).
-- Same as the built-in check (a LoadBalancer Service is Healthy once status.loadBalancer has an
-- ingress address, Progressing until then; other Services are Healthy), except that a Service
-- vipam refused is Degraded with vipam's reason instead of Progressing forever:
--   condition vipam.io/Allocated=False (no address: pool exhausted, pin taken, ...), or
--   vipam.io/Allocated=True with reason KeptPrevious (it keeps its old address, but the change
--   Git asks for was refused).
local hs = {}
if obj.spec == nil or obj.spec.type ~= "LoadBalancer" then
  hs.status = "Healthy"
  hs.message = ""
  return hs
end
local allocated = nil
local announced = nil
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "vipam.io/Allocated" then
      allocated = condition
    elseif condition.type == "vipam.io/Announced" then
      announced = condition
    end
  end
end
if allocated ~= nil and (allocated.status == "False" or allocated.reason == "KeptPrevious") then
  hs.status = "Degraded"
  hs.message = "vipam: " .. tostring(allocated.reason) .. ": " .. tostring(allocated.message)
  return hs
end
local addresses = {}
if obj.status ~= nil and obj.status.loadBalancer ~= nil and obj.status.loadBalancer.ingress ~= nil then
  for _, ingress in ipairs(obj.status.loadBalancer.ingress) do
    if ingress.ip ~= nil and ingress.ip ~= "" then
      table.insert(addresses, ingress.ip)
    elseif ingress.hostname ~= nil and ingress.hostname ~= "" then
      table.insert(addresses, ingress.hostname)
    end
  end
end
if #addresses == 0 then
  hs.status = "Progressing"
  hs.message = "waiting for a load balancer address"
  return hs
end
hs.status = "Healthy"
hs.message = table.concat(addresses, ", ")
if announced ~= nil and announced.status == "False" then
  hs.message = hs.message .. "; not announced yet: " .. tostring(announced.message)
end
return hs

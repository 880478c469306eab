-- Argo CD health of vipam.io/IPAllocation (the ledger; written by vipam, never kept in Git):
--   Progressing  no phase yet (just reserved by the webhook), or Bound but no agent announces
--                the address yet
--   Degraded     condition Orphaned=True: the address lies outside every IPPool (kept for its
--                Services, never renumbered; add it back to a pool)
--   Healthy      Bound and announced (status.announcer), or Released: a normal step of the
--                lifecycle (reserved for the same Service for the sticky period, then deleted)
local hs = {}
local status = obj.status
local ip = "the address"
if obj.spec ~= nil and obj.spec.ip ~= nil then
  ip = obj.spec.ip
end
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = ip .. " is reserved; waiting for the vipam controller to bind it"
  return hs
end
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Orphaned" and condition.status == "True" then
      hs.status = "Degraded"
      hs.message = tostring(condition.message)
      return hs
    end
  end
end
if status.phase == "Released" then
  hs.status = "Healthy"
  hs.message = ip .. " is released"
  if status.releasedAt ~= nil then
    hs.message = hs.message .. " since " .. status.releasedAt
  end
  hs.message = hs.message .. "; reserved for its last Service until the sticky period ends"
  return hs
end
if status.phase == "Bound" then
  local announcer = status.announcer
  if announcer ~= nil and announcer.node ~= nil then
    hs.status = "Healthy"
    hs.message = ip .. " is announced by node " .. announcer.node .. " on " .. tostring(announcer.interface)
    return hs
  end
  local bgp = {}
  if status.announcers ~= nil then
    for _, a in ipairs(status.announcers) do
      if a.via == "bgp" and a.node ~= nil then
        table.insert(bgp, a.node)
      end
    end
  end
  if #bgp > 0 then
    hs.status = "Healthy"
    hs.message = ip .. " is announced by BGP from " .. table.concat(bgp, ", ")
    return hs
  end
  hs.status = "Progressing"
  hs.message = ip .. " is bound but not yet announced by any vipam agent"
  return hs
end
hs.status = "Progressing"
hs.message = "unknown phase " .. tostring(status.phase)
return hs

-- Health of a child Application in an app-of-apps (Argo CD 1.8 removed the built-in one), so
-- that the parent's sync waves wait for vipam to be Healthy before syncing workloads.
local hs = {}
hs.status = "Progressing"
hs.message = ""
if obj.status ~= nil and obj.status.health ~= nil and obj.status.health.status ~= nil then
  hs.status = obj.status.health.status
  if obj.status.health.message ~= nil then
    hs.message = obj.status.health.message
  end
end
return hs

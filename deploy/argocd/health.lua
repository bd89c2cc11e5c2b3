-- Argo CD health check for every celery-operator.dev kind (CeleryApp, CeleryExchange,
-- CeleryQueue, CeleryWorkerPool, CeleryBeatSchedule).
--
-- The operator reports health the Kubernetes way: a `Ready` condition in status.conditions,
-- each condition carrying the metadata.generation it was computed for (observedGeneration).
--   no status / no Ready condition yet             -> Progressing
--   status or Ready condition for an older spec   -> Progressing (the operator has not caught up)
--   Ready=True                                     -> Healthy
--   Ready=False with a reason that resolves itself -> Progressing (rollout under way, waiting on the app)
--   Ready=False otherwise                          -> Degraded (needs a human: bad spec, missing secret ...)
--   Ready=Unknown                                  -> Progressing
-- Runs in Argo CD's sandboxed gopher-lua (Lua 5.1): no os/io/require.

local hs = {}

-- Ready=False reasons the operator expects to clear on their own.
local transient = {
  DeploymentProgressing = true,
  AppNotReady = true,
  ScaledUp = true,
  ScaledDown = true,
}

local function find_condition(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  local msg = c.message
  if msg == nil or msg == "" then
    msg = c.reason
  end
  if msg == nil or msg == "" then
    msg = "Ready=" .. tostring(c.status)
  end
  if c.reason ~= nil and c.reason ~= "" and msg ~= c.reason then
    msg = c.reason .. ": " .. msg
  end
  return msg
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = find_condition(obj.status.conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

if ready.status == "False" then
  local degraded = find_condition(obj.status.conditions, "Degraded")
  local progressing = find_condition(obj.status.conditions, "Progressing")
  if degraded ~= nil and degraded.status == "True" then
    hs.status = "Degraded"
    hs.message = describe(degraded)
  elseif (progressing ~= nil and progressing.status == "True") or transient[ready.reason] then
    hs.status = "Progressing"
    hs.message = describe(ready)
  else
    hs.status = "Degraded"
    hs.message = describe(ready)
  end
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready)
return hs

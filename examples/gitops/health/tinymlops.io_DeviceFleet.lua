-- Argo CD health check for tinymlops.io/DeviceFleet (installed by examples/gitops/argocd-cm.yaml).
--
-- Argo CD runs custom checks with `obj` (the live object) in scope and only the base, table and a reduced
-- os library: no string or math library, so this script builds messages with `..` and tostring alone.
-- It also runs on objects the operator has not touched yet, so every field may be missing.
--
--   status missing, or not for metadata.generation   Progressing (the operator has not seen this spec)
--   Pending                                           Progressing (waiting for the model's menu or for devices)
--   Progressing                                       Progressing
--   Paused                                            Suspended (as Argo CD shows a paused Argo Rollout)
--   Healthy                                           Healthy
--   Degraded                                          Degraded (the message names the reason)
--
-- The step in messages is status.currentStepIndex as is (0-based), the numbering the operator's own events
-- and conditions use, so "step 1" here and in `kubectl describe` is the same step.

local hs = {status = "Progressing", message = ""}

local function text(value)
  if value == nil then
    return ""
  end
  return tostring(value)
end

local function condition(status, wanted)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == wanted then
      return c
    end
  end
  return nil
end

-- "Reason: message", or whichever of the two exists.
local function explain(c)
  if c == nil then
    return ""
  end
  local reason, message = text(c.reason), text(c.message)
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  return reason .. message
end

local function message_of(c)
  if c == nil then
    return ""
  end
  return text(c.message)
end

-- "canary revision 3 at 50% (step 2)" while a canary exists, else nil.
local function canary(status)
  if status.canaryRevision == nil then
    return nil
  end
  local line = "canary revision " .. text(status.canaryRevision) .. " at " .. text(status.canaryWeight or 0) .. "%"
  if status.currentStepIndex ~= nil then
    line = line .. " (step " .. text(status.currentStepIndex) .. ")"
  end
  return line
end

-- Why the canary holds: the Progressing condition, unless it only repeats the revision and weight.
local function holding(c)
  if c == nil or c.reason == "Progressing" then
    return ""
  end
  return explain(c)
end

-- The condition that says what is wrong: Ready when false (an invalid spec, a model not ready), else Converged.
local function problem(status)
  local ready = condition(status, "Ready")
  if ready ~= nil and ready.status == "False" then
    return ready
  end
  return condition(status, "Converged")
end

local metadata = obj.metadata
if type(metadata) ~= "table" then
  metadata = {}
end
local status = obj.status
if type(status) ~= "table" or status.phase == nil then
  hs.message = "waiting for the operator to pick up the fleet"
  return hs
end

-- A spec pushed from git (a new policy, spec.paused) bumps metadata.generation; until the operator has acted
-- on it the phase describes the previous spec. Compared through tonumber: Argo CD hands JSON numbers it kept
-- as json.Number to Lua as strings, and a generation "3" must not look stale forever next to 3.
local generation = tonumber(metadata.generation)
local observed = tonumber(status.observedGeneration)
if generation ~= nil and observed ~= generation then
  hs.message = "waiting for the operator to observe generation " .. text(generation)
  if observed ~= nil then
    hs.message = hs.message .. " (status is for generation " .. text(observed) .. ")"
  end
  return hs
end

local phase = text(status.phase)
local moving = canary(status)
local progressing = condition(status, "Progressing")
local converged = condition(status, "Converged")

if phase == "Healthy" then
  hs.status = "Healthy"
  hs.message = message_of(converged)
elseif phase == "Paused" then
  hs.status = "Suspended"
  hs.message = moving or "rollout paused"
  local why = holding(progressing)
  if why ~= "" then
    hs.message = hs.message .. "; " .. why
  end
elseif phase == "Progressing" then
  if moving ~= nil then
    hs.message = moving
    local why = holding(progressing)
    if why ~= "" then
      hs.message = hs.message .. "; " .. why
    end
  else
    hs.message = message_of(converged)
  end
elseif phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = explain(problem(status))
elseif phase == "Pending" then
  hs.message = explain(problem(status))
else
  hs.message = "phase " .. phase .. " is unknown to this health check"
end
if hs.message == "" then
  hs.message = "phase " .. phase
  if status.stableRevision ~= nil then
    hs.message = hs.message .. ", stable revision " .. text(status.stableRevision)
  end
end
return hs

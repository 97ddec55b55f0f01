-- Argo CD health check for tinymlops.io/EdgeModel (installed by examples/gitops/argocd-cm.yaml).
--
-- Argo CD runs custom checks with `obj` (the live object) in scope and only the base, table and a reduced
-- os library: no string or math library, so this script builds messages with `..` and tostring alone.
-- It also runs on objects the operator has not touched yet, so every field may be missing.
--
--   status missing, or not for metadata.generation   Progressing (the operator has not seen this spec)
--   Pending, Building                                 Progressing
--   Retrying                                          Progressing (see below)
--   Ready                                             Healthy
--   Failed                                            Degraded
--
-- Retrying is a transient failure (the pipeline or the store) that the operator retries with backoff and
-- recovers from without any change in git; Degraded would tell the user to fix something, and Failed is kept
-- for errors only a new spec fixes. So it stays Progressing, with the error in the message.

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

local metadata = obj.metadata
if type(metadata) ~= "table" then
  metadata = {}
end
local status = obj.status
if type(status) ~= "table" or status.phase == nil then
  hs.message = "waiting for the operator to pick up the model"
  return hs
end

-- A spec pushed from git bumps metadata.generation; until the operator has acted on it the phase (even Ready)
-- describes the previous spec. Compared through tonumber: Argo CD hands JSON numbers it kept as json.Number to
-- Lua as strings, and a generation "3" must not look stale forever next to 3.
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
local ready = condition(status, "Ready")
local message = ""
if ready ~= nil then
  message = text(ready.message)
end

if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = message
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = explain(ready)
elseif phase == "Retrying" then
  if status.attempts ~= nil then
    hs.message = "retrying after attempt " .. text(status.attempts) .. ": " .. explain(ready)
  else
    hs.message = "retrying: " .. explain(ready)
  end
elseif phase == "Building" or phase == "Pending" then
  hs.message = message
else
  hs.message = "phase " .. phase .. " is unknown to this health check"
  if message ~= "" then
    hs.message = hs.message .. "; " .. message
  end
end
if hs.message == "" then
  hs.message = "phase " .. phase
end
return hs

"""The Lantern agent: capture, decode, attribute, sessionize and report AI-service use."""

from agent.native import activate as _activate

# Before any hot-path module is imported: use its compiled build only when it is current.
_activate()

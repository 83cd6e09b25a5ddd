"""The sandbox: a Beeswax-compatible HTTP server over a ground-truth market.

``SandboxService`` runs it in-process (the daemon's sandbox mode, the tests);
``serve_standalone`` runs it from a scenario file (``campaignd sandbox serve``).
"""

from campaignd.dsp.sandbox.faults import FaultConfig, ScriptedFault
from campaignd.dsp.sandbox.server import create_app
from campaignd.dsp.sandbox.service import SandboxService, serve_standalone
from campaignd.dsp.sandbox.state import SandboxState

__all__ = ["FaultConfig", "SandboxService", "SandboxState", "ScriptedFault", "create_app",
           "serve_standalone"]

"""``build_app``: the Ray Serve application builder of the ASR server.

``serve run services.asr.serve.app:build_app model=... device=cuda`` or the ``import_path`` of
``deploy/ray/serve.yaml`` (its ``args`` are the options). The options are ``asr-server``'s:
see ``options.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from .deployment import ASRReplica
from .options import parse_options


def build_app(args: Mapping[str, Any] | None = None) -> Application:
    """The ASR application: ``ASRReplica`` with these options, one replica per GPU.

    Args:
        args: ``asr-server``'s options by name (``model``, ``device``, ``chunk_ms``,
            ``max_streams``...), plus placement (``num_gpus``, ``num_cpus``, ``resources``,
            ``num_replicas`` or ``autoscaling_config``). The token is read from
            ``$VOICE_AGENT_ASR_TOKEN`` in each replica.

    Raises:
        ValueError: An unknown option or an invalid value.
    """
    replica, deployment = parse_options(dict(args or {}))
    return ASRReplica.options(**deployment).bind(replica)

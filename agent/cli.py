"""The ``voice-agent`` command: run the agent, show the config, check the set-up."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.config import ConfigError, ResolvedConfig, load_config, settings_table
from pipelines.checks import StartupError

WEB_DIR = Path(__file__).parent / "web"

# Subcommands added by other modules register here: name -> (configure parser, handler).
EXTRA_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable]] = {}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="TOML config file (default: $VOICE_AGENT_CONFIG)")
    parser.add_argument("-p", "--profile", help="profile: auto, cpu, nvidia or one from the file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set llm.temperature=0.3 (repeatable)",
    )
    parser.add_argument("--env-file", default=".env", help="dotenv file to read (default: .env)")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"],
        help="log_level (DEBUG also shows the traceback of a start-up error)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="voice-agent",
        description="Real-time voice agent: Nemotron streaming ASR + any LLM + Magpie TTS.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve the browser room and run a bot per session")
    _add_config_options(run)
    run.add_argument(
        "-t",
        "--transport",
        choices=["webrtc", "daily", "twilio", "telnyx", "plivo", "exotel"],
        help="transport.type (twilio, telnyx, plivo, exotel: phone calls on /ws)",
    )
    run.add_argument(
        "-x", "--proxy", help="transport.proxy: public host name for phone calls (abc.ngrok.app)"
    )
    run.add_argument("--host", help="transport.host (default localhost)")
    run.add_argument("--port", type=int, help="transport.port (default 7860)")
    run.add_argument("--no-prewarm", action="store_true", help="load models on first session")

    config = sub.add_parser("config", help="print the resolved config and where each value is from")
    _add_config_options(config)
    config.add_argument("--json", action="store_true", help="print JSON (secrets masked)")

    doctor = sub.add_parser("doctor", help="check packages, GPU, models, endpoints; suggest fixes")
    _add_config_options(doctor)

    for name, (configure, _handler) in EXTRA_COMMANDS.items():
        configure(sub.add_parser(name))
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set llm.model=gpt-4o")
        found[key.strip()] = value
    for key in ("transport", "host", "port", "proxy"):
        value = getattr(args, key, None)
        if value is not None:
            found[f"transport.{'type' if key == 'transport' else key}"] = str(value)
    if getattr(args, "log_level", None):
        found["log_level"] = args.log_level
    return found


def resolve(args: argparse.Namespace) -> ResolvedConfig:
    """Load config from the CLI options, the environment, .env and the file."""
    resolved = load_config(
        args.config,
        profile=args.profile,
        overrides=_overrides(args),
        dotenv_path=args.env_file,
    )
    # main() shows a start-up error's traceback only at DEBUG, from wherever DEBUG was set.
    args.resolved_log_level = resolved.settings.log_level
    return resolved


def exit_on_stop_signals() -> None:
    """Make SIGTERM and SIGINT end the process through its normal exit, with exit code 0.

    Why: uvicorn (under Pipecat's runner) stops its server on these signals, then puts back the
    handler it found and raises the signal again. The default SIGTERM handler then killed the
    process on the spot, skipping ``atexit``, and the embedded llama.cpp server lived on. A
    ``SystemExit`` instead unwinds everything and runs the ``atexit`` hooks that stop the
    children (the llama.cpp server, multiprocessing's engine process), during model loading too.
    Call it from the main thread.

    A stop also arms a deadline (``STOP_DEADLINE_S``): a shutdown that hangs (a Daily join that
    never completes keeps ``asyncio.run`` waiting for the bot task) ends in a hard exit. Nothing
    is left behind by it: every child dies with this process (``services/lifetime.py``).
    """

    def stop(signum: int, _frame) -> None:
        _arm_stop_deadline()
        raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:  # under Pipecat's runner uvicorn's own handler receives the signal first
        import uvicorn.server
    except ImportError:
        return
    original = uvicorn.server.Server.handle_exit
    if getattr(original, "_arms_stop_deadline", False):
        return

    def handle_exit(self, sig: int, frame) -> None:
        _arm_stop_deadline()
        original(self, sig, frame)

    handle_exit._arms_stop_deadline = True  # type: ignore[attr-defined]
    uvicorn.server.Server.handle_exit = handle_exit


# Longest a stop signal may take to end the process (the promise is 5 s for everything).
STOP_DEADLINE_S = 4.0
_stop_deadline = threading.Event()


def _arm_stop_deadline() -> None:
    if _stop_deadline.is_set():
        return
    _stop_deadline.set()

    def hard_exit() -> None:
        time.sleep(STOP_DEADLINE_S)
        sys.stderr.write(
            f"voice-agent: shutdown did not finish within {STOP_DEADLINE_S:g} s; exiting now\n"
        )
        sys.stderr.flush()
        os._exit(0)

    threading.Thread(target=hard_exit, name="stop-deadline", daemon=True).start()


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved settings with their sources."""
    resolved = resolve(args)
    rows = settings_table(resolved)
    if args.json:
        print(
            json.dumps({key: {"value": value, "source": src} for key, value, src in rows}, indent=2)
        )
        return 0
    print(f"config file: {resolved.config_path or '(none)'}")
    width = max(len(key) for key, _, _ in rows)
    value_width = min(48, max(len(value) for _, value, _ in rows))
    for key, value, source in rows:
        print(f"{key.ljust(width)}  {value.ljust(value_width)}  {source}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run the checks; exit 0 only if every required one passes."""
    from agent.doctor import format_table, run_checks

    # As `run` does: keys kept in .env (DAILY_API_KEY, OPENAI_API_KEY) count as set.
    _load_dotenv_without_override(args.env_file)
    resolved = resolve(args)
    settings = resolved.settings
    print(
        f"profile {settings.profile}: stt={settings.stt.backend} llm={settings.llm.preset} "
        f"tts={settings.tts.backend} transport={settings.transport.type}\n"
    )
    results = run_checks(settings)
    print(format_table(results))
    failed = [c for c in results if c.required and not c.ok]
    print()
    print("all checks passed" if not failed else f"{len(failed)} check(s) failed: see fixes above")
    return 1 if failed else 0


def _load_dotenv_without_override(path: str) -> None:
    from dotenv import load_dotenv

    load_dotenv(path, override=False)


def _import_runner():
    """Import Pipecat's runner without letting its ``load_dotenv(override=True)`` win.

    The runner loads ``.env`` over the real environment at import; our precedence says the
    environment beats ``.env``, so restore what was set before the import.
    """
    before = dict(os.environ)
    import pipecat.runner.run as runner

    for key, value in before.items():
        os.environ[key] = value
    return runner


def _serve_room(app) -> None:
    """Serve our room page at ``/`` (works offline); the prebuilt client stays at /client/."""
    from fastapi.responses import HTMLResponse

    page = (WEB_DIR / "room.html").read_text()

    @app.get("/", include_in_schema=False)
    async def room() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/room", include_in_schema=False)
    async def room_alias() -> HTMLResponse:
        return HTMLResponse(page)


def cmd_run(args: argparse.Namespace) -> int:
    """Start the Pipecat runner with our bot and room page.

    Raises:
        ConfigError: A bad setting.
        StartupError: A predictable failure (port taken, no CUDA, model missing, no API key),
            found before any model loads where possible.
    """
    from loguru import logger

    from agent import daily, telephony
    from agent.logs import setup_logging
    from agent.prewarm import preflight, prewarm
    from pipelines.checks import check_port_free, require

    _load_dotenv_without_override(args.env_file)
    resolved = resolve(args)
    settings = resolved.settings
    setup_logging(settings.log_level)
    exit_on_stop_signals()
    # What is sure to fail fails now, in one line, before Pipecat and the models load.
    transport = settings.transport
    # Phone calls: -x for the runner, and hang-up credentials complete or absent.
    runner_transport_args = telephony.runner_arguments(transport)
    hang_up = telephony.is_telephony(transport.type) and telephony.check_hang_up_credentials(
        transport.type
    )
    if transport.type == "daily":  # every room Pipecat's runner creates needs the API key
        for check in daily.startup_checks():
            require(check)
    require(
        check_port_free(
            "transport.port",
            transport.host,
            transport.port,
            fix="stop what listens there (another voice-agent?), or pick another port: --port N",
        )
    )
    preflight(settings)

    from agent import bot
    from agent.webrtc_tuning import keep_audio_output_fed, reduce_audio_receive_latency

    if resolved.sources.get("profile", "").startswith("auto"):
        logger.info(
            f"Profile {settings.profile} chosen automatically "
            f"({'NVIDIA GPU found' if settings.profile == 'nvidia' else 'no NVIDIA GPU found'}); "
            "override with --profile"
        )
    bot.configure(settings)
    # The user's audio reaches the VAD/ASR 80 ms sooner and the bot's audio has no holes
    # (see agent/webrtc_tuning.py).
    reduce_audio_receive_latency()
    keep_audio_output_fed()
    if not args.no_prewarm:
        prewarm(settings)

    runner = _import_runner()
    _serve_room(runner.app)
    # The runner finds the bot in __main__; the console script's __main__ has none.
    sys.modules["__main__"].bot = bot.bot  # type: ignore[attr-defined]
    sys.argv = [
        "voice-agent run",
        "--host",
        transport.host,
        "--port",
        str(transport.port),
        *runner_transport_args,
    ]
    if telephony.is_telephony(transport.type):
        logger.info(telephony.ready_message(transport, hang_up))
    elif transport.type == "daily":
        logger.info(daily.ready_message(transport))
    else:
        logger.info(f"Open http://{transport.host}:{transport.port}/ and press Connect")
    runner.main()
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "config": cmd_config,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``voice-agent`` console script."""
    _register_extra_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command) or EXTRA_COMMANDS[args.command][1]
    try:
        return handler(args)
    except ConfigError as exc:
        _report(args, exc, str(exc))
        return 2
    except StartupError as exc:
        _report(args, exc, exc.message + (f"\n  fix: {exc.fix}" if exc.fix else ""))
        return 1
    except KeyboardInterrupt:  # Ctrl-C before a command set up its own handling
        return 130


def _report(args: argparse.Namespace, exc: BaseException, message: str) -> None:
    """Print a user-facing error: one message, the traceback only when asked for with DEBUG."""
    level = getattr(args, "resolved_log_level", None) or getattr(args, "log_level", None)
    if level in ("DEBUG", "TRACE"):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"voice-agent: {message}", file=sys.stderr)


def _register_extra_commands() -> None:
    """Let optional subsystems add subcommands (the ASR server, benchmarks)."""
    import importlib

    for module in ("agent.asr_server_cmd", "agent.asr_cluster_cmd"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real missing dependency inside it: say so
                raise


if __name__ == "__main__":
    # Subcommands register on the importable agent.cli, not on this __main__ copy.
    from agent.cli import main as _main

    sys.exit(_main())

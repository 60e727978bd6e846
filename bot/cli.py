"""The ``byokbot`` command: run the bot, chat in the console, migrate, rotate keys, administer."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from bot import texts
from core.chat import (
    ChatRef,
    Event,
    EventKind,
    Platform,
    UserRef,
)
from core.config import Config, load_config
from core.errors import ConfigError, CoreError, StartupError
from core.hardening import protect_process, take_secrets
from core.logs import configure_logging

if TYPE_CHECKING:
    from core.db import Database
    from core.health import HealthServer

CLI_OPERATOR = UserRef(Platform.CONSOLE, "cli", "operator")
INTERRUPTED = 130  # the exit code of a program stopped by Ctrl-C (128 + SIGINT)


# Plain text: argparse prints these as they are (the module docstring is reStructuredText).
DESCRIPTION = (
    "byokbot: people's own AI agents in Telegram, Discord, Slack or this terminal. "
    "Run the bot, chat in the console, migrate the database, rotate the master key, "
    "and administer tenants."
)
EPILOG = (
    "Exit status: 0 on success; 1 when something outside the configuration failed (a "
    "service is unreachable, another process holds the bot or the database, an admin "
    "command was refused or a notice could not be delivered); 2 for a configuration "
    "problem (the file, a variable it names, the master key); 130 when stopped with "
    "Ctrl-C (SIGTERM stops with 0). Errors are one line on "
    "stderr: 'byokbot: error: ...'."
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="byokbot", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument(
        "--config", help="configuration file (default: $BYOKBOT_CONFIG or ./config.toml)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="serve every enabled platform (the console when none is enabled)")
    sub.add_parser("chat", help="chat with byokbot in this terminal")
    px = sub.add_parser("proxy", help="run only the managed plan's metering proxy ([proxy] table)")
    px.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the [proxy] port (SO_REUSEPORT; default 1, about one per core)",
    )
    px.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade"])
    mk = sub.add_parser("master-key", help="master key maintenance")
    mk.add_argument("action", choices=["rotate", "status"])
    mk.add_argument(
        "--retire",
        action="store_true",
        help="after rotating, drop master key versions no data key uses",
    )
    sub.add_parser("config", help="validate the configuration").add_argument(
        "action", choices=["check"]
    )
    sub.add_parser(
        "sandbox", help="show the agent sandbox's layers and run its self-test escape"
    ).add_argument("action", choices=["check"])
    sub.add_parser(
        "doctor",
        help="check config, master key, database, platform tokens, webhook, proxy keys, sandbox",
    )
    bk = sub.add_parser("backup", help="copy the SQLite database to FILE (not the master key)")
    bk.add_argument("file", help="the backup file to write (must not exist)")
    rs = sub.add_parser("restore", help="put a backup made by byokbot backup in place")
    rs.add_argument("file", help="the backup file")
    rs.add_argument("--force", action="store_true", help="replace an existing database")
    admin = sub.add_parser("admin", help="operator commands, as in chat: byokbot admin stats")
    admin.add_argument("args", nargs=argparse.REMAINDER)
    return p


async def _serve(
    config: Config,
    env: Mapping[str, str],
    *,
    console_only: bool,
    on_serving: Callable[[], None] | None = None,
    on_first_tenant: Callable[[], None] | None = None,
) -> int:
    from adapters.console import ConsoleAdapter
    from bot.app import App

    any_platform = any(p.enabled for p in config.platforms.values())
    console = ConsoleAdapter() if console_only or not any_platform else None
    app = App(
        config,
        env=env,
        console=console,
        platforms=not console_only,
        on_serving=on_serving,
        on_first_tenant=on_first_tenant,
        freeze_heap=True,
    )
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(sig: int) -> None:
        signals.append(sig)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await app.start()
        if app.supervisor is not None:
            report = app.supervisor.sandbox_report()
            line = report.line()
            if config.logging.format == "json":
                # Every stderr line is one JSON object in this format, the start-up line too.
                weak = report.mode == "off" or bool(report.missing)
                logging.getLogger("byokbot.sandbox").log(
                    logging.WARNING if weak else logging.INFO, line
                )
            else:
                print(line, file=sys.stderr, flush=True)
        if app.console is not None:
            app.console.notice(texts.CONSOLE_BANNER)
        await app.run_until_stopped(stop)
    finally:
        await app.stop()
    # Ctrl-C (SIGINT) always exits 130, as a shell expects of an interrupted program; a
    # requested stop (SIGTERM) and the end of input are a normal exit, 0.
    return INTERRUPTED if signal.SIGINT in signals else 0


async def _proxy_workers(args: argparse.Namespace, config: Config, env: Mapping[str, str]) -> int:
    """``--workers N``: N proxy processes on one port; each is ``byokbot proxy`` itself.

    The kernel spreads connections among them (SO_REUSEPORT). They share the budget through
    the database, whose conditional reservation already holds across processes. Only worker 0
    runs the periodic jobs. Output: the workers' lines, then one ``metering proxy on`` line
    once all listen. A worker that dies stops the others (exit 1).
    """
    argv = [sys.executable, "-m", "bot"]
    if args.config:
        argv += ["--config", args.config]
    workers: list[asyncio.subprocess.Process] = []
    for i in range(args.workers):
        workers.append(
            await asyncio.create_subprocess_exec(
                *argv,
                "proxy",
                "--worker-index",
                str(i),
                stdout=asyncio.subprocess.PIPE,
                # The secrets were taken out of this process's environment: hand them on.
                env=dict(env),
            )
        )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)

    async def relay(proc: asyncio.subprocess.Process, ready: asyncio.Event) -> None:
        assert proc.stdout is not None  # noqa: S101 - a pipe, asked for above
        async for line in proc.stdout:
            if line.startswith(b"metering proxy worker"):
                ready.set()
            sys.stdout.buffer.write(line)
            sys.stdout.flush()

    readies = [asyncio.Event() for _ in workers]
    relays = [asyncio.create_task(relay(p, r)) for p, r in zip(workers, readies, strict=True)]
    exits = [asyncio.create_task(p.wait()) for p in workers]

    async def ready_all() -> None:
        for r in readies:
            await r.wait()

    all_ready = asyncio.create_task(ready_all())
    stop = asyncio.create_task(stopping.wait())
    await asyncio.wait([all_ready, stop, *exits], return_when=asyncio.FIRST_COMPLETED)
    if all_ready.done() and not stop.done():
        print(f"metering proxy on {config.proxy.url} ({args.workers} workers)", flush=True)
        await asyncio.wait([stop, *exits], return_when=asyncio.FIRST_COMPLETED)
    all_ready.cancel()
    died = [i for i, e in enumerate(exits) if e.done()] if not stop.done() else []
    for p in workers:
        if p.returncode is None:
            p.terminate()
    await asyncio.gather(*exits)
    await asyncio.gather(*relays)
    stop.cancel()
    if died:
        i = died[0]
        print(
            f"byokbot: error: proxy worker {i} exited with code {workers[i].returncode}; "
            "stopped the others",
            file=sys.stderr,
        )
        return 1
    return 0


async def _proxy(config: Config, env: Mapping[str, str], worker: int | None = None) -> int:
    # Only what the proxy needs is imported: no agents, adapters, ORM flows or Alembic, and on
    # a file SQLite or PostgreSQL database not SQLAlchemy either (core.rawdb), so the
    # standalone proxy stays small. Its database must already be migrated (byokbot db upgrade).
    from core.budget import LoggingAlertSink
    from core.hardening import secure_config_storage
    from core.ports import SystemClock
    from core.proxy import ProxyServer
    from core.proxy_tokens import ProxyTokens
    from core.rawdb import RawDatabase, open_raw

    secure_config_storage(config, key_from_file=False)
    raw = open_raw(config.database_url)
    db: Database | RawDatabase
    if raw is not None:
        db = raw
    else:
        from core.db import Database

        db = Database(config.database_url)
    tokens = ProxyTokens(
        db,
        SystemClock(),
        keep=config.proxy.tokens_kept,
        cache_seconds=config.proxy.token_cache_seconds,
    )
    server = ProxyServer(
        config.proxy,
        db,
        plans=config.plans,
        env=env,
        tokens=tokens,
        sink=LoggingAlertSink(),
        trial_caps=config.billing.trial_caps,
        release_heap_when_idle=True,
    )
    # A worker of --workers shares the port with its siblings; only worker 0 runs the jobs.
    serving = asyncio.create_task(
        server.serve_forever(jobs=not worker, reuse_port=worker is not None)
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, serving.cancel)
    listening = asyncio.create_task(server.listening.wait())
    await asyncio.wait([listening, serving], return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    if server.listening.is_set():
        where = "" if worker is None else f" worker {worker}"
        print(f"metering proxy{where} on {config.proxy.url}", flush=True)
    # Workers share one port for requests, not for health: worker 0 answers it.
    health = await _proxy_health(config, serving) if config.health.enabled and not worker else None
    try:
        with contextlib.suppress(asyncio.CancelledError):  # SIGINT/SIGTERM: a normal stop
            await serving
    finally:
        if health is not None:
            await health.stop()
        if raw is not None:
            await raw.close()
        else:
            await cast("Database", db).dispose()
    return 0


async def _proxy_health(config: Config, serving: asyncio.Task[None]) -> HealthServer:
    """``[health]`` for the standalone proxy: its database, migrations and listener.

    The migration check reads Alembic's chain, so ``[health]`` brings SQLAlchemy into the
    proxy's process after all (an engine of its own, used by these checks only).
    """
    from core.db import Database
    from core.db.status import migration_problem, ping

    db = Database(config.database_url)
    from core.health import HealthServer, Readiness

    async def database() -> str | None:
        try:
            await ping(db)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return f"unreachable ({type(exc).__name__})"
        return None

    async def migrations() -> str | None:
        return await migration_problem(db)

    async def proxy() -> str | None:
        return "stopped" if serving.done() else None

    checks = [
        Readiness("database", database),
        Readiness("migrations", migrations),
        Readiness("proxy", proxy),
    ]
    server = HealthServer(config.health.host, config.health.port, checks)
    await server.start()
    return server


async def _admin(config: Config, env: Mapping[str, str], args: Sequence[str]) -> int:
    from bot.app import App

    if args and args[0].lower() == "rotate-master-key":
        # From a shell this is the CLI's rotation, with its guard against a running bot.
        return await _master_key(config, env, "rotate", retire=False)

    core = dataclasses.replace(config.core, admins=(*config.core.admins, CLI_OPERATOR.identity))
    app = App(dataclasses.replace(config, core=core), env=env, platforms=False, agent_runtime=False)
    from collections import Counter

    from bot import texts
    from bot.cli_notices import OperatorTerminal, Undeliverable

    undelivered: Counter[str] = Counter()
    try:
        await app.open()
        messengers = app.services.messengers
        assert isinstance(messengers, dict)  # noqa: S101 - built as a dict in App.open()
        messengers[Platform.CONSOLE] = OperatorTerminal(CLI_OPERATOR.id, undelivered)
        if args and args[0].lower() in NOTIFYING:
            # Tenants hear of it in their own chats: log in to each enabled platform to send
            # (no polling or gateway, so this is safe beside a running bot).
            await app.open_senders()
        for platform in Platform:
            messengers.setdefault(platform, Undeliverable(platform, undelivered))
        text = " ".join(["/admin", *args])
        outcome = await app.router.dispatch(
            Event(
                EventKind.COMMAND,
                CLI_OPERATOR,
                ChatRef(Platform.CONSOLE, "cli", True),
                text=text,
                command="admin",
                args=tuple(args),
            )
        )
    finally:
        await app.stop()
    if undelivered:
        where = ", ".join(f"{n} on {p}" for p, n in sorted(undelivered.items()))
        line = texts.CLI_UNDELIVERED.format(count=sum(undelivered.values()), where=where)
        print(f"byokbot: error: {line}", file=sys.stderr)
        return 1
    return 1 if outcome.refused else 0


# Admin commands that tell tenants something in their chats.
NOTIFYING = frozenset({"broadcast", "suspend", "resume"})


async def _master_key(config: Config, env: Mapping[str, str], action: str, *, retire: bool) -> int:
    from bot.app import App, load_master_keys
    from core.db import upgrade

    if action == "status":
        ring = load_master_keys(config, env, create=False)
        await upgrade(config.database_url)
        app = App(config, env=env, platforms=False, agent_runtime=False)
        await app.open()
        try:
            used = await app.services.credentials.kek_versions_in_use()
        finally:
            await app.db.dispose()
        print(
            f"primary: v{ring.primary_version}; loaded: "
            + ", ".join(f"v{v}" for v in ring.versions)
        )
        for version, count in sorted(used.items()):
            print(f"v{version}: {count} data key(s)")
        return 0
    if env.get(config.core.master_key_env) is not None:
        raise ConfigError(
            f"{config.core.master_key_env} is set: rotate by adding a new version to it "
            '("v1:<old>,v2:<new>") and running byokbot master-key rotate without it set'
        )
    from core.db.instance import InstanceLock

    app = App(config, env=env, platforms=False, agent_runtime=False)
    await app.open()
    # Never beside a serving bot: it would meet data keys wrapped by a version it has not
    # loaded, and --retire could drop the version it still wraps new tenants with.
    lock = InstanceLock(app.db)
    try:
        if not await lock.try_exclusive():
            raise StartupError(
                "a running byokbot holds this database; rotate from a chat with "
                "/admin rotate-master-key (no downtime), or stop every bot and run this again"
            )
        assert app.services.rotate_master_key is not None  # noqa: S101 - key comes from a file
        version, count = await app.services.rotate_master_key()
        print(f"master key v{version} is primary; {count} data key(s) rewrapped")
        if retire:
            used = await app.services.credentials.kek_versions_in_use()
            ring = app.vault.ring
            for old in ring.versions:
                if old != ring.primary_version and not used.get(old):
                    ring = ring.without(old)
                    print(f"retired master key v{old}")
            from core.vault import MasterKeyRing

            MasterKeyRing.write_file(config.resolve_path(config.core.master_key_file), ring)
            app.vault.set_ring(ring)
    finally:
        await lock.release()
        await app.db.dispose()
    return 0


async def _main(args: argparse.Namespace) -> int:
    if args.command == "doctor":
        return await _doctor(args)
    config = load_config(args.config)
    # Secrets leave the environment before anything can read or inherit it: the fork server
    # and multiprocessing's resource tracker are exec'd with this process's environment.
    env = take_secrets(config.secret_env_names())
    level = config.core.log_level
    console = args.command == "chat" or (
        args.command == "run" and not any(p.enabled for p in config.platforms.values())
    )
    one_shot = args.command not in ("run", "chat", "proxy")
    if (console or one_shot) and level == "INFO":
        # The terminal is the chat, or shows one command's outcome: no routine log lines.
        level = "WARNING"
    configure_logging(level, json_lines=config.logging.format == "json")
    if args.command in ("run", "chat"):
        from core.runtime.prestart import agents_may_be_asked, start_template, stop_template

        serving = first_tenant = None
        if not config.agent.command:  # else agents are the operator's program, exec'd each time
            # Not before: on a busy machine it would slow this process's own start (the time
            # nothing is served); once serving, it loads while the first message is awaited.
            if agents_may_be_asked(config.database_url):
                serving = start_template
            else:
                first_tenant = start_template
        try:
            return await _serve(
                config,
                env,
                console_only=args.command == "chat",
                on_serving=serving,
                on_first_tenant=first_tenant,
            )
        finally:
            stop_template()  # one still loading after a failed start would linger a second
    if args.command == "proxy":
        if args.workers < 1:
            print("byokbot: error: --workers must be at least 1", file=sys.stderr)
            return 2
        if args.workers > 1 and args.worker_index is None:
            return await _proxy_workers(args, config, env)
        return await _proxy(config, env, args.worker_index)
    if args.command == "db":
        from bot.app import open_master_keys
        from core.db import Database, upgrade
        from core.hardening import secure_config_storage

        key_from_file = env.get(config.core.master_key_env) is None
        secure_config_storage(config, key_from_file=key_from_file)
        await upgrade(config.database_url)
        db = Database(config.database_url)
        try:
            # Same rule as at start: a key is made for an empty database only.
            await open_master_keys(config, env, db)
        finally:
            await db.dispose()
        print("database is up to date")
        return 0
    if args.command == "master-key":
        return await _master_key(config, env, args.action, retire=args.retire)
    if args.command == "config":
        from bot.app import App

        App(config, env=env).build_adapters()  # every enabled platform has its settings, tokens
        if _key_exists(config, env):
            from bot.app import load_master_keys

            load_master_keys(config, env, create=False)
        print(f"{config.source}: configuration is valid")
        return 0
    if args.command == "admin":
        return await _admin(config, env, args.args)
    if args.command in ("backup", "restore"):
        from pathlib import Path

        from bot import backup

        if args.command == "backup":
            print(await backup.backup(config, Path(args.file)))
        else:
            print(await backup.restore(config, env, Path(args.file), force=args.force))
        return 0
    raise AssertionError(args.command)  # argparse restricts the choices


async def _doctor(args: argparse.Namespace) -> int:
    from bot.doctor import doctor, fail

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(fail("config", str(exc)))
        return 1
    configure_logging("WARNING", json_lines=config.logging.format == "json")
    return await doctor(config, os.environ)  # before take_secrets: doctor checks them


def _sandbox_check(config: Config) -> int:
    """``byokbot sandbox check``: the start-up line, then a confined child tries to escape."""
    from pathlib import Path

    from core.runtime import sandbox, sandbox_check

    settings = config.agent
    report = sandbox.report_for(settings)
    print(report.line())
    if report.mode == "off":
        return 0
    base_url = next(iter(config.providers.values())).base_url if config.providers else ""

    def spec(workdir: str) -> sandbox.Spec:
        return sandbox.spec_for(settings, report, "sandbox-check", base_url, Path(workdir))

    refused, escaped = sandbox_check.run(spec)
    if escaped or report.refused:
        failures = "; ".join([*escaped, *report.missing]) or "none"
        print(
            f"byokbot: error: {texts.SANDBOX_CHECK_FAILED.format(failures=failures)}",
            file=sys.stderr,
        )
        return 1
    print(texts.SANDBOX_CHECK_PASSED.format(count=len(refused)))
    for line in refused:
        print(f"  refused: {line}")
    return 0


def _key_exists(config: Config, env: Mapping[str, str]) -> bool:
    return (
        env.get(config.core.master_key_env) is not None
        or config.resolve_path(config.core.master_key_file).exists()
    )


def _runner(command: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """The proxy runs on uvloop when installed (``pip install 'byokbot[fast]'``), else asyncio."""
    if command == "proxy":
        try:
            import uvloop
        except ImportError:
            return asyncio.run
        return uvloop.run
    return asyncio.run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    # First of all: this process will hold every tenant's key (see core.hardening).
    protect_process()
    args = _parser().parse_args(argv)
    try:
        if args.command == "sandbox":
            # Before any event loop or thread: the self-test forks.
            return _sandbox_check(load_config(args.config))
        return _runner(args.command)(_main(args))
    except StartupError as exc:  # a service down or held by another process: runtime
        print(f"byokbot: error: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, CoreError) as exc:  # the file, a variable it names, the master key
        print(f"byokbot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return INTERRUPTED

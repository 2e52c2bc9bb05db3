#!/usr/bin/env python3
"""Measures what a credential-less flood does to a running `usher serve` (issue 9's figures).

Opens IDLE TLS connections that never send a request and SLOW connections that send an unfinished
~390 KB header a little at a time, from 127.0.0.1 (and, with --sources N, spread over N loopback
addresses 127.0.1.x), then, while they are open, times one device registration and one management
call made from another address (127.0.0.2, with curl --interface), and reads the server's resident
memory. Prints one JSON object.

  scripts/flood.py --pid PID --port 443 --ca ca.pem --scope 0ne… --registration-id dev \\
      --token 'SharedAccessSignature …' --service-token 'SharedAccessSignature …' \\
      --idle 10000 --slow 1000

Standard library only; curl does the legitimate requests. Loopback only, bounded in count and time.
"""

import argparse
import asyncio
import json
import ssl
import subprocess
import time


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


async def open_idle(host, port, ctx, source, results):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost",
                                    local_addr=(source, 0)),
            timeout=30)
        results["idle_open"] += 1
        return reader, writer
    except Exception:
        results["idle_refused"] += 1
        return None


async def slow_header(host, port, ctx, source, results, stop_at):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost",
                                    local_addr=(source, 0)),
            timeout=30)
    except Exception:
        results["slow_refused"] += 1
        return
    results["slow_open"] += 1
    sent = 0
    try:
        writer.write(b"PUT /x/registrations/y/register HTTP/1.1\r\nHost: localhost\r\n")
        line = b"X-Filler: " + b"a" * 4000 + b"\r\n"
        while sent < 390 * 1024 and time.monotonic() < stop_at:
            writer.write(line)
            await writer.drain()
            sent += len(line)
            await asyncio.sleep(0.5)
        results["slow_sent_all"] += 1
    except Exception:
        results["slow_cut_off"] += 1
        results["slow_cut_after_bytes"] = max(results["slow_cut_after_bytes"], sent)


async def still_open(conns):
    """How many of the idle connections the server has not closed."""
    alive = 0
    for c in conns:
        if c is None:
            continue
        reader, _ = c
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=0.01)
            if data:
                alive += 1
        except asyncio.TimeoutError:
            alive += 1
        except Exception:
            pass
    return alive


def curl(args):
    start = time.monotonic()
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60",
                          "--interface", "127.0.0.2"] + args, capture_output=True, text=True)
    return out.stdout.strip(), round(time.monotonic() - start, 3)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--ca", required=True)
    p.add_argument("--scope", required=True)
    p.add_argument("--registration-id", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--service-token", required=True)
    p.add_argument("--idle", type=int, default=10000)
    p.add_argument("--slow", type=int, default=1000)
    p.add_argument("--sources", type=int, default=1)
    p.add_argument("--hold", type=float, default=20.0, help="seconds to keep the flood open")
    a = p.parse_args()

    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    sources = ["127.0.0.1"] if a.sources <= 1 else [f"127.0.1.{i + 1}" for i in range(a.sources)]
    results = {k: 0 for k in ["idle_open", "idle_refused", "slow_open", "slow_refused",
                              "slow_sent_all", "slow_cut_off", "slow_cut_after_bytes"]}
    base_rss = rss_mb(a.pid)
    started = time.monotonic()
    conns = []
    batch = 500
    for i in range(0, a.idle, batch):
        conns += await asyncio.gather(*[
            open_idle("127.0.0.1", a.port, ctx, sources[(i + j) % len(sources)], results)
            for j in range(min(batch, a.idle - i))])
    stop_at = time.monotonic() + a.hold
    slow = [asyncio.create_task(slow_header("127.0.0.1", a.port, ctx, sources[i % len(sources)],
                                            results, stop_at)) for i in range(a.slow)]
    await asyncio.sleep(3)
    peak_rss = rss_mb(a.pid)
    url = f"https://localhost:{a.port}/{a.scope}/registrations/{a.registration_id}/register?api-version=2021-06-01"
    reg_status, reg_secs = curl(["--cacert", a.ca, "-X", "PUT", url, "-H", f"Authorization: {a.token}",
                                 "-H", "Content-Type: application/json", "-d", "{}"])
    mgmt_status, mgmt_secs = curl(["--cacert", a.ca, "-X", "POST",
                                   f"https://localhost:{a.port}/enrollments/query?api-version=2021-10-01",
                                   "-H", f"Authorization: {a.service_token}",
                                   "-H", "Content-Type: application/json", "-d", '{"query":"*"}'])
    held_at_register = await still_open(conns)
    peak_rss = max(peak_rss or 0, rss_mb(a.pid) or 0)
    await asyncio.gather(*slow)
    held_after_hold = await still_open(conns)
    for c in conns:
        if c is not None:
            c[1].close()
    print(json.dumps({
        "idle": a.idle, "slow": a.slow, "sources": len(sources),
        "idleConnectionsAccepted": results["idle_open"], "idleConnectionsRefused": results["idle_refused"],
        "idleHeldWhenDeviceRegistered": held_at_register,
        "idleHeldAfterSeconds": {"seconds": round(time.monotonic() - started, 1), "held": held_after_hold},
        "slowConnectionsAccepted": results["slow_open"], "slowCutOff": results["slow_cut_off"],
        "slowSentWholeHeader": results["slow_sent_all"],
        "slowMostBytesBeforeCutOff": results["slow_cut_after_bytes"],
        "deviceRegister": {"status": reg_status, "seconds": reg_secs},
        "managementQuery": {"status": mgmt_status, "seconds": mgmt_secs},
        "serverRssMb": {"before": base_rss, "peak": peak_rss},
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/python3
"""Helpers for bench/run.

  report.py ports N            N free TCP ports (127.0.0.1 and 0.0.0.0), outside the
                               ephemeral range, one per line
  report.py iperf FILE         Gbit/s received, from `iperf3 -J` output
  report.py wrk FILE           "RPS P99_MS ERRORS" from `wrk --latency` output
  report.py table RAW [OUT]    the final tables from the raw "system|metric|value" lines
"""
import json
import random
import re
import socket
import statistics
import sys


def ports(n):
    out = []
    start = random.randrange(20000, 31000)
    p = start
    while len(out) < n and p < 32700:
        ok = True
        for host in ("127.0.0.1", "0.0.0.0"):
            s = socket.socket()
            try:
                s.bind((host, p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok and p != 7835:
            out.append(p)
        p += 1
    print("\n".join(map(str, out)))


def iperf(path):
    try:
        d = json.load(open(path))
        v = d["end"]["sum_received"]["bits_per_second"] / 1e9
        iv = [i["sum"]["bits_per_second"] for i in d.get("intervals", [])]
        # a transfer that stopped part-way (e.g. a stream aborted by the tunnel)
        zero = sum(1 for x in iv[1:] if iv and x < 0.01 * max(iv))
        print("%.3f" % v + (" stopped:%d/%d-intervals-near-zero" % (zero, len(iv)) if zero else ""))
    except Exception:
        print("fail")


def wrk(path):
    t = open(path, errors="replace").read()
    m = re.search(r"Requests/sec:\s*([\d.]+)", t)
    rps = m.group(1) if m else "fail"
    p99 = "fail"
    m = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
    if m:
        v = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
        p99 = "%.3f" % v
    err = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    if m:
        err += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    if m:
        err += int(m.group(1))
    print(rps, p99, err)


# ---- table ---------------------------------------------------------------------

NAMES = {
    "direct": "direct",
    "native": "culvert native (public port)",
    "kr": "culvert KohakuRiver (forward)",
    "wss": "culvert native, agent on wss://",
    "rathole": "rathole tcp",
    "bore": "bore",
}
ORDER = ["direct", "native", "wss", "kr", "rathole", "bore"]


def load(raw):
    d = {}
    for line in open(raw):
        line = line.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        parts = line.split("|", 2)
        if len(parts) != 3:
            continue
        d.setdefault((parts[0], parts[1]), []).append(parts[2])
    return d


def num(vals):
    out = []
    for v in vals or []:
        try:
            out.append(float(v))
        except ValueError:
            pass
    return out


def med(d, sysname, metric):
    v = num(d.get((sysname, metric)))
    return statistics.median(v) if v else None


def first(d, sysname, metric):
    v = d.get((sysname, metric))
    return v[0] if v else None


def table(raw, out=None):
    d = load(raw)
    systems = [s for s in ORDER if any(k[0] == s for k in d)]
    lines = []
    w = lines.append

    def ratio(s, metric, fmt="%.2f"):
        v, base = med(d, s, metric), med(d, "direct", metric)
        if v is None:
            return "n/a" if first(d, s, "status") != "ok" else "fail"
        if not base:
            return "%.1f" % v
        return ("%.1f (" + fmt + ")") % (v, v / base)

    w("| system | iperf3 up Gbit/s | down | -P 8 | wrk -c32 req/s | wrk p99 ms | added p50 µs (p99) | KiB per held conn server/client | idle RSS KiB server/client |")
    w("|---|---|---|---|---|---|---|---|---|")
    base_p50 = med(d, "direct", "rtt_p50")
    for s in systems:
        st = first(d, s, "status") or "ok"
        if st != "ok":
            w("| %s | n/a (%s) | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" % (NAMES[s], st))
            continue
        p50, p99 = med(d, s, "rtt_p50"), med(d, s, "rtt_p99")
        if p50 is None:
            lat = "fail"
        elif s == "direct":
            lat = "0 (p50 %.1f, p99 %.1f)" % (p50, p99)
        else:
            lat = "+%.1f (p99 %.1f)" % (p50 - base_p50, p99) if base_p50 is not None else "%.1f" % p50
        wp99 = med(d, s, "wrk_p99_ms")
        if s == "direct":
            mem = idle = "–"
        else:
            ks, kc, kf = med(d, s, "kib_per_conn_server"), med(d, s, "kib_per_conn_client"), med(d, s, "kib_per_conn_forward")
            fmt = lambda x: "?" if x is None else "%.1f" % x
            mem = "%s / %s" % (fmt(ks), fmt(kc)) + (" (+forward %s)" % fmt(kf) if kf is not None else "")
            i_s, i_c, i_f = med(d, s, "idle_rss_server"), med(d, s, "idle_rss_client"), med(d, s, "idle_rss_forward")
            fi = lambda x: "?" if x is None else "%d" % x
            idle = "%s / %s" % (fi(i_s), fi(i_c)) + (" (+forward %s)" % fi(i_f) if i_f is not None else "")
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            NAMES[s], ratio(s, "iperf_up"), ratio(s, "iperf_down"), ratio(s, "iperf_p8"),
            ratio(s, "wrk_rps").replace(".0 (", " ("), "?" if wp99 is None else "%.2f" % wp99, lat, mem, idle))
    w("")
    w("Ratios in parentheses are to direct, measured in the same run. iperf3: median of the runs listed in the raw file.")
    w("server/client = relay/agent for culvert, server/client process for rathole and bore.")

    # issue 3 targets (the native path is the one they are for; KohakuRiver shown for reference)
    base = {m: med(d, "direct", m) for m in ("iperf_up", "iperf_down", "iperf_p8", "wrk_rps", "rtt_p50")}
    for s in ("native", "kr"):
        if s not in systems or (first(d, s, "status") or "ok") != "ok":
            continue
        checks = []

        def chk(label, v, ok):
            checks.append("%s %s %s" % (label, v, "ok" if ok else "MISS"))

        for m, label in (("iperf_up", "up"), ("iperf_down", "down"), ("iperf_p8", "-P8")):
            v = med(d, s, m)
            if v is not None and base[m]:
                chk(label, "%.2f" % (v / base[m]), v / base[m] >= 0.5)
        v = med(d, s, "wrk_rps")
        if v is not None and base["wrk_rps"]:
            chk("wrk", "%.2f" % (v / base["wrk_rps"]), v / base["wrk_rps"] >= 0.8)
        v = med(d, s, "rtt_p50")
        if v is not None and base["rtt_p50"] is not None:
            chk("added p50", "%+.0fµs" % (v - base["rtt_p50"]), v - base["rtt_p50"] <= 50)
        for role, name in (("server", "relay"), ("client", "agent")):
            v = med(d, s, "idle_rss_" + role)
            if v is not None:
                chk(name + " idle", "%.1fMiB" % (v / 1024), v <= 3072)
            v = med(d, s, "kib_per_conn_" + role)
            if v is not None:
                chk(name + " KiB/conn", "%.1f" % v, v <= 8)
        for k in ("held_10k", "held_10k_3_sessions"):
            v = first(d, s, k)
            if v:
                m = re.search(r"err (\d+)", v)
                chk("10k" + (" (3 sessions)" if "3_sessions" in k else ""), "err %s" % (m.group(1) if m else "?"), bool(m) and m.group(1) == "0")
        v = med(d, s, "stall_ratio")
        if v is not None:
            chk("stall", "%.2f" % v, v >= 0.9)
        elif first(d, s, "stall_solo_gbps") is not None:
            chk("stall", "fail", False)
        w("")
        w("Targets of issue 3, %s: %s" % (NAMES[s], "; ".join(checks)))

    # extra details
    extra = []
    for s in systems:
        for k in ("iperf_up", "iperf_down", "iperf_p8", "rtt_p50", "idle_anon_server", "idle_anon_client",
                  "wrk_errors", "held_1000", "recheck_1000", "held_10k", "recheck_10k",
                  "kib_per_conn_10k_server", "kib_per_conn_10k_client", "held_10k_one_session",
                  "held_10k_3_sessions", "recheck_10k_3_sessions", "stall_solo_gbps", "stall_with_stalled_gbps",
                  "stall_ratio", "peak_rss_server", "peak_rss_client", "stall_relay_rss_before", "stall_relay_rss_max", "stall_a_alive", "iperf_note", "stall_solo_error", "stall_b_error", "perf_iperf_up_gbps", "perf_iperf_down_gbps", "log_warnings", "log_sample", "restarted"):
            v = d.get((s, k))
            if v:
                extra.append("%s %s: %s" % (NAMES[s], k, ", ".join(v)))
    if extra:
        w("")
        w("Details:")
        for e in extra:
            w("- " + e)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if out:
        open(out, "w").write(text)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ports":
        ports(int(sys.argv[2]))
    elif cmd == "iperf":
        iperf(sys.argv[2])
    elif cmd == "wrk":
        wrk(sys.argv[2])
    elif cmd == "table":
        table(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)

#!/usr/bin/env python3
"""Samples the route RLOG shard on a leader core and a follower (replicant) every
--interval-ms, until every node reports --routes routes and the follower has caught up with the
leader (or --timeout-s). Writes one JSON line per sample to --out and a summary on stdout.

Lag is measured here as leader seq - follower seq, both read within one sample (the follower's
own `lag` field, entries behind its upstream core as it last heard, is recorded too)."""
import argparse, json, time, urllib.request


def get(api, path):
    try:
        with urllib.request.urlopen(f"http://{api}{path}", timeout=2) as r:
            return json.load(r)
    except Exception:
        return None


def route_shard(api):
    s = get(api, "/api/v1/rlog")
    if not s:
        return None
    for sh in s.get("shards", []):
        if sh.get("shard") == "route":
            return sh
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--leader", required=True)
    p.add_argument("--follower", required=True)
    p.add_argument("--all", required=True, help="comma-separated API addresses of every node")
    p.add_argument("--routes", type=int, required=True)
    p.add_argument("--interval-ms", type=int, default=50)
    p.add_argument("--timeout-s", type=float, default=300)
    p.add_argument("--start-file", help="sampling of lag starts counting once this file exists")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    nodes = a.all.split(",")
    deadline = time.time() + a.timeout_s
    samples = 0
    lags = []
    own_lags = []
    converged_ms = None
    base_seq = None
    with open(a.out, "w") as out:
        while time.time() < deadline:
            t0 = time.time()
            lead = route_shard(a.leader)
            fol = route_shard(a.follower)
            if lead and fol:
                if base_seq is None:
                    base_seq = lead["seq"]
                lag = max(0, lead["seq"] - fol["seq"])
                rec = {"t_ms": int(t0 * 1000), "leader_seq": lead["seq"], "follower_seq": fol["seq"],
                       "lag": lag, "follower_lag_field": fol.get("lag"), "state": fol.get("state")}
                # Only the storm counts: from the first entry past the base seq.
                if lead["seq"] > base_seq:
                    lags.append(lag)
                    own_lags.append(fol.get("lag") or 0)
                samples += 1
                caught_up = lead["seq"] > base_seq and lag == 0
                if caught_up and samples % 2 == 0:
                    counts = [(get(n, "/api/v1/cluster") or {}).get("routes") for n in nodes]
                    rec["routes"] = counts
                    if all(c == a.routes for c in counts):
                        converged_ms = int(time.time() * 1000)
                        out.write(json.dumps(rec) + "\n")
                        break
                out.write(json.dumps(rec) + "\n")
            time.sleep(max(0.0, a.interval_ms / 1000 - (time.time() - t0)))
    summary = {
        "samples": samples,
        "storm_samples": len(lags),
        "lag_max": max(lags) if lags else None,
        "lag_mean": round(sum(lags) / len(lags), 1) if lags else None,
        "follower_lag_field_max": max(own_lags) if own_lags else None,
        "converged_unix_ms": converged_ms,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

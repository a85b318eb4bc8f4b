#!/usr/bin/env python3
"""Starts the real agent-svc and pruner-svc (the pruner pointed at the
agent) on loopback ports in a scratch folder, runs a command with {PRUNER}
and {AGENT} in its arguments replaced by their addresses, then stops both
with SIGTERM. Fails when the command fails or a service does not exit 0.

    with_services.py --pruner-bin P --agent-bin A --data DIR -- COMMAND [ARGS...]
"""
import argparse
import subprocess
import sys

import aplib


def main():
    argv = sys.argv[1:]
    if "--" not in argv:
        print("usage: with_services.py --pruner-bin P --agent-bin A --data DIR -- COMMAND [ARGS...]",
              file=sys.stderr)
        return 2
    cut = argv.index("--")
    a = aplib.common_args(argparse.ArgumentParser()).parse_args(argv[:cut])
    cmd = argv[cut + 1:]
    env = aplib.Env(a, "interop")
    try:
        agent = env.agent()
        pruner = env.pruner(agent.addr)
        cmd = [x.replace("{PRUNER}", pruner.addr).replace("{AGENT}", agent.addr) for x in cmd]
        rc = subprocess.run(cmd).returncode
        for name, s in (("pruner-svc", pruner), ("agent-svc", agent)):
            st = s.stop()
            if st != 0:
                print("with_services: %s exited with %s:\n%s" % (name, st, s.log_tail()), file=sys.stderr)
                rc = rc or 1
        return rc
    finally:
        env.close()


if __name__ == "__main__":
    sys.exit(main())

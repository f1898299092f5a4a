"""Run as ``python -m warm_probe CODE [FD]`` (cold or warm): prints what a started process is, as JSON, then
exits with CODE; with FD, whether that descriptor holds an exclusive flock on its file."""

import fcntl
import json
import os
import sys

fd = int(sys.argv[2]) if len(sys.argv) > 2 else None
if fd is not None:
    probe = os.open(os.readlink(f"/proc/self/fd/{fd}"), os.O_RDONLY)
    try:  # another open file description of the same file: refused while FD's lock is held
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = False
    except BlockingIOError:
        locked = True
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "cwd": os.getcwd(),
                  "argv": sys.argv[1:], "env": dict(os.environ), "path0": sys.path[0],
                  "locked": locked if fd is not None else None, "name": __name__}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))

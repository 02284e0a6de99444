"""Meeting the other workers before TensorFlow starts the cluster, with a deadline.

TensorFlow waits for missing peers without a deadline while holding the GIL (no Python thread, not
even a SIGTERM handler, runs), so a peer that never comes would hang every worker silently. So
each worker first holds its own port and tries every peer's address at once until all answer
(`wait_for_peers`: a ClusterError naming the missing peers after `runtime.cluster_timeout_s`),
then hands the port to TensorFlow; `startup_watchdog` is the backstop for a peer that vanishes
between this rendezvous and TensorFlow's cluster start (a separate process that kills this one).
"""

import contextlib
import errno
import os
import selectors
import socket
import subprocess
import sys
import time

from tflm.errors import ClusterError, TflmError
from tflm.training.cluster import split_address

RETRY_S = 0.2  # between two tries to reach a peer that refused
TRY_S = 1.0  # how long one try may wait for a peer that does not answer (a dropped SYN)
MAX_TRIES_AT_ONCE = 256  # connections open at once while waiting, well below the usual 1024 files
MISSING_NAMED = 10  # peers named in the error line; the rest are counted


def wait_for_peers(task, timeout_s):
    """Rendezvous before TensorFlow starts: hold this task's port, wait until every peer's
    address answers, then hand the port to TensorFlow. A ClusterError names the peers still
    missing after `timeout_s`; a TflmError says if this task's own port is taken.

    TensorFlow itself waits for missing peers without a deadline while holding the GIL (no
    Python thread, not even a SIGTERM handler, runs), so the waiting has to happen here. The
    peers are tried all at once, each try cut at TRY_S and at the deadline, so that the deadline
    holds however many peers there are and however they fail to answer.
    """
    own = dict(task.addresses)[task.name]
    listener = listen_on(own, task.name)
    try:
        missing = reach({name: address for name, address in task.addresses if name != task.name},
                        time.monotonic() + timeout_s, listener)
    finally:
        listener.close()
    if missing:
        named = ", ".join(f"{name} ({address})" for name, address in list(missing.items())[:MISSING_NAMED])
        more = f" and {len(missing) - MISSING_NAMED} more" if len(missing) > MISSING_NAMED else ""
        raise ClusterError(f"runtime.cluster_timeout_s={timeout_s}s passed waiting for the cluster; "
                           f"not reachable: {named}{more}")


def listen_on(own, name):
    """A socket holding the port of this task's address `own` on every interface, IPv6 and IPv4
    (the task's own name may not resolve to it yet); IPv4 only where the host has no IPv6."""
    port = split_address(own)[1]
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            listener = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind((host, port))
        except OSError as error:
            listener.close()
            if error.errno == errno.EADDRINUSE:
                raise TflmError(f"{name}'s address {own} is already in use") from None
            continue
        listener.listen(64)
        listener.setblocking(False)
        return listener
    raise TflmError(f"{name} cannot listen on port {port} of this host")


def reach(peers, deadline, listener):
    """Try every peer {name: address} until each has accepted a TCP connection or `deadline`
    (time.monotonic) passes; returns the {name: address} never reached. Meanwhile accepts (and
    closes) the connections peers make to `listener`, so that its backlog never fills up."""
    pending, tries_made = dict(peers), dict.fromkeys(peers, 0)
    next_try = dict.fromkeys(peers, 0.0)
    tries = {}  # socket -> (peer name, when this try is given up)
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        try:
            while pending and time.monotonic() < deadline:
                now = time.monotonic()
                trying = {name for name, _ in tries.values()}
                for name in [n for n in pending if n not in trying and next_try[n] <= now]:
                    if len(tries) >= MAX_TRIES_AT_ONCE:
                        break
                    sock = start_connect(pending[name], tries_made[name])
                    tries_made[name] += 1
                    next_try[name] = now + RETRY_S
                    if sock is not None:
                        tries[sock] = (name, min(now + TRY_S, deadline))
                        selector.register(sock, selectors.EVENT_WRITE)
                wake = min([deadline, now + RETRY_S, *(give_up for _, give_up in tries.values())])
                for key, _ in selector.select(max(0.0, wake - time.monotonic())):
                    if key.fileobj is listener:
                        accept_and_close(listener)
                        continue
                    name, _ = tries.pop(key.fileobj)
                    selector.unregister(key.fileobj)
                    if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        del pending[name]
                    key.fileobj.close()
                now = time.monotonic()
                for sock in [sock for sock, (_, give_up) in tries.items() if give_up <= now]:
                    del tries[sock]
                    selector.unregister(sock)
                    sock.close()
        finally:
            for sock in tries:
                sock.close()
    return pending


def start_connect(address, attempt):
    """A non-blocking socket connecting to "host:port" (the attempt-th of the host's addresses,
    in turn), or None if the host does not resolve (yet) or refused at once."""
    host, port = split_address(address)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    family, kind, proto, _, target = found[attempt % len(found)]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    try:
        sock.connect(target)
    except (BlockingIOError, InterruptedError):
        pass  # under way: the selector reports how it ended
    except OSError:  # refused at once
        sock.close()
        return None
    return sock


def accept_and_close(listener):
    """Accept the connections waiting on `listener` and close them: a peer only checks it is up."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        connection.close()


WATCHDOG = """
import os, select, signal, sys
parent, timeout_s, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], timeout_s)[0]:  # neither disarmed nor ended in time
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
"""


@contextlib.contextmanager
def startup_watchdog(task, timeout_s, prefix):
    """Backstop for a peer that vanishes between the rendezvous and TensorFlow's cluster start:
    TensorFlow then waits without a deadline while holding the GIL, so no Python thread or
    signal handler runs. A watchdog process prints one line and kills this one (status 137) if
    the block has not finished in `timeout_s`; closing its stdin disarms it, and it also ends
    when this process does."""
    if task.num_workers <= 1:
        yield
        return
    message = (f"{prefix}tflm: error: TensorFlow did not start the cluster within runtime.cluster_timeout_s="
               f"{timeout_s}s (a peer went away after the rendezvous?); relaunch the same command on every worker")
    watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(timeout_s), message],
                                stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()

"""The rendezvous before TensorFlow starts a cluster (tflm.training.rendezvous.wait_for_peers) keeps
its deadline however many peers fail to answer and however, works over IPv6, and a TF_CONFIG
address it could not use is a one-line error. Loopback addresses only."""

import json
import socket
import threading
import time

import pytest

from conftest import run_tflm
from tflm.errors import ClusterError, TflmError
from tflm.training.launcher import reserve_ports
from tflm.training.cluster import Worker, parse_tf_config
from tflm.training.rendezvous import wait_for_peers


def cluster_task(index, addresses):
    """Worker `index` of a cluster of workers at `addresses`."""
    return Worker("worker", index, len(addresses), False, tuple((f"worker {i}", a) for i, a in enumerate(addresses)))


@pytest.fixture
def silent_peers():
    """100 loopback addresses (127.0.0.2 ...) that accept no connection: each listener's backlog
    is full, so the kernel drops further connection requests unanswered, as a host that is down."""
    sockets, addresses = [], []
    for i in range(100):
        listener = socket.socket()
        listener.bind((f"127.0.0.{2 + i}", 0))
        listener.listen(0)
        sockets.append(listener)
        for _ in range(2):  # fill the backlog
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            sockets.append(filler)
        addresses.append("%s:%d" % listener.getsockname())
    yield addresses
    for sock in sockets:
        sock.close()


def port_free_on_every_address():
    """A port no socket holds on any address: the task listens on all of them, and a port free on
    127.0.0.1 may be a silent peer's on 127.0.0.4."""
    while True:
        port = reserve_ports(0, 1)[0]
        with socket.socket() as listener:
            try:
                listener.bind(("", port))
                return port
            except OSError:
                continue


def test_the_deadline_is_kept_with_100_peers_that_never_answer(silent_peers):
    with socket.socket() as probe:  # the fixture does what it says
        probe.settimeout(0.5)
        host, port = silent_peers[0].split(":")
        with pytest.raises(socket.timeout):
            probe.connect((host, int(port)))
    own = f"127.0.0.1:{port_free_on_every_address()}"
    started = time.monotonic()
    with pytest.raises(ClusterError) as error:
        wait_for_peers(cluster_task(0, [own, *silent_peers]), timeout_s=1)
    assert 1 <= time.monotonic() - started < 5  # was 50 s: each peer tried 0.5 s in turn, the deadline checked after
    message = str(error.value)
    assert message.startswith("runtime.cluster_timeout_s=1s passed waiting for the cluster; not reachable: "
                              f"worker 1 ({silent_peers[0]}), worker 2 ({silent_peers[1]}),")
    assert message.endswith(" and 90 more") and "\n" not in message


def rendezvous(addresses, start_delays_s, timeout_s=10):
    """Run wait_for_peers for every task of `addresses` in threads, each after its delay; once a
    task's rendezvous is done, a listener takes its port, as TensorFlow's server would. Returns
    each task's outcome: seconds waited, or the error."""
    outcomes, servers = {}, []

    def task(index):
        time.sleep(start_delays_s[index])
        started = time.monotonic()
        try:
            wait_for_peers(cluster_task(index, addresses), timeout_s)
        except TflmError as error:
            outcomes[index] = error
            return
        outcomes[index] = time.monotonic() - started
        host, _, port = addresses[index].rpartition(":")
        server = socket.socket(socket.AF_INET6 if host.startswith("[") else socket.AF_INET)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host.strip("[]"), int(port)))
        server.listen()
        servers.append(server)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(len(addresses))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for server in servers:
        server.close()
    return outcomes


def ipv6_loopback():
    """Whether this machine has IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost",
                                  pytest.param("[::1]", marks=pytest.mark.skipif(not ipv6_loopback(),
                                                                                 reason="no IPv6 loopback"))])
def test_workers_that_start_at_different_times_meet(host):
    addresses = [f"{host}:{port}" for port in reserve_ports(0, 3)]
    outcomes = rendezvous(addresses, start_delays_s=[0, 0.3, 0.6])
    assert all(isinstance(waited, float) for waited in outcomes.values()), outcomes
    assert outcomes[0] >= 0.5 and outcomes[2] < 0.3  # the first waited for the last, which found both up


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_an_ipv6_peer_that_never_comes_is_named_within_the_deadline():
    own, missing = (f"[::1]:{port}" for port in reserve_ports(0, 2))
    started = time.monotonic()
    with pytest.raises(ClusterError, match=rf"not reachable: worker 1 \({missing}\)$".replace("[", r"\[")):
        wait_for_peers(cluster_task(0, [own, missing]), timeout_s=1)
    assert time.monotonic() - started < 2.5


def tf_config(workers, index=0):
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize("workers, index, message", [
    (["localhost:abc", "localhost:2"], 0,
     "TF_CONFIG cluster[\"worker\"] has 'localhost:abc': the port must be a number from 1 to 65535"),
    (["localhost:1", "localhost:99999"], 0,
     "TF_CONFIG cluster[\"worker\"] has 'localhost:99999': the port must be a number from 1 to 65535"),
    (["localhost:1", ":2"], 0, "TF_CONFIG cluster[\"worker\"] has ':2': the host is missing"),
    (["::1:1", "localhost:2"], 0,
     "TF_CONFIG cluster[\"worker\"] has '::1:1': write an IPv6 address in brackets, as [::1]:1"),
    (["localhost:1", "localhost:2"], True, "TF_CONFIG task index must be a whole number, got true"),
    (["localhost:1", "localhost:2"], "0", "TF_CONFIG task index must be a whole number, got \"0\""),
])
def test_tf_config_addresses_and_indexes_that_cannot_work_are_one_line_errors(workers, index, message):
    with pytest.raises(TflmError) as error:
        parse_tf_config(tf_config(workers, index))
    assert str(error.value) == message


def test_an_ipv6_cluster_description_is_accepted():
    task = parse_tf_config(tf_config(["[::1]:2222", "127.0.0.1:2223"], 1))
    assert task.name == "worker 1" and task.addresses == (("worker 0", "[::1]:2222"), ("worker 1", "127.0.0.1:2223"))


def test_a_bad_tf_config_port_from_the_command_line_is_exit_2_in_one_line(tmp_path):
    result = run_tflm("train", "--run-dir", str(tmp_path / "run"), timeout=60,
                      env={"TF_CONFIG": tf_config(["localhost:abc", "localhost:2"])})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "tflm: error: TF_CONFIG cluster[\"worker\"] has 'localhost:abc': the port must be a number from 1 to 65535"]
    assert not (tmp_path / "run").exists()

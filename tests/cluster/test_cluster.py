"""Three gateways, one Redis: shared slots, shared rate limits, Redis failing and
coming back, and usage totalled across the instances."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

ALICE = "sk-alice-0123456789"
LIMITED = "sk-limited-0123456789"


def chat(gateway, key, model="gpu/m", timeout=60):
    return httpx.post(
        f"{gateway.base}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=timeout,
    )


def ollama_chat(gateway, key, model="echo/m"):
    return httpx.post(
        f"{gateway.base}/api/chat",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "stream": False, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_a_limited_key_gets_its_rpm_across_three_gateways_in_both_dialects(cluster):
    gateways = cluster({LIMITED: {"user": "carol", "rpm": 12}})

    def ask(i):
        gateway = gateways[i % 3]
        if i % 2:
            return "ollama", ollama_chat(gateway, LIMITED)
        return "openai", chat(gateway, LIMITED, "echo/m")

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(ask, range(30)))
    admitted = [a for _, a in answers if a.status_code == 200]
    refused = [(d, a) for d, a in answers if a.status_code != 200]
    assert len(admitted) == 12, [a.status_code for _, a in answers]
    assert {d for d, _ in refused} == {"openai", "ollama"}
    for dialect, answer in refused:
        assert answer.status_code == 429, answer.text
        assert 1 <= int(answer.headers["retry-after"]) <= 60
        assert answer.headers["x-ratelimit-limit-requests"] == "12"
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"
        if dialect == "openai":
            assert answer.json()["error"]["type"] == "rate_limit_error"
            assert "all of this gateway's instances" in answer.json()["error"]["message"]
        else:
            assert "all of this gateway's instances" in answer.json()["error"]
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in admitted)
    # The shared count: every admitted request saw one fewer left, whichever instance.
    assert remaining == list(range(12))


def test_a_backend_never_sees_more_than_its_cluster_wide_max_concurrent(cluster, upstream):
    gateways = cluster({ALICE: "alice", "sk-bob-0123456789ab": "bob"})
    keys = [ALICE, "sk-bob-0123456789ab"]
    with ThreadPoolExecutor(max_workers=18) as pool:
        answers = list(pool.map(
            lambda i: chat(gateways[i % 3], keys[i % 2]), range(18)))
    assert [a.status_code for a in answers] == [200] * 18
    assert upstream.served == 18
    # Each instance alone would let two through: six at once without the cluster.
    assert upstream.most == 2


def test_a_keys_max_concurrent_holds_across_the_gateways(cluster, upstream):
    capped = "sk-capped-0123456789"
    gateways = cluster({capped: {"user": "carol", "max_concurrent": 1}})
    # On a backend without a line: the second at once is refused, as on one instance.
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda g: chat(g, capped, "free/m"), gateways[:2]))
    # Each instance alone would run both; across the cluster the key has one slot.
    assert sorted(a.status_code for a in answers) == [200, 429], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    assert "max_concurrent" in refused.json()["error"]["message"]
    # On a limited backend the key's requests wait in line and run one at a time.
    upstream.most = 0
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(lambda g: chat(g, capped), gateways))
    assert [a.status_code for a in answers] == [200] * 3
    assert upstream.most == 1


def test_a_killed_gateway_frees_its_slot_within_the_lease_time(cluster, upstream, redis, lease_secs):
    gateways = cluster({ALICE: "alice"}, max_concurrent=1)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(chat, gateways[0], ALICE, "gpu/slow", 5)
        wait_for(lambda: redis.command("ZCARD", "switchyard:slots:backend:gpu") == 1, 5,
                 "the slow request holds the slot")
        # Held and renewed: another instance's request waits past a lease time.
        time.sleep(lease_secs * 1.5)
        assert redis.command("ZCARD", "switchyard:slots:backend:gpu") == 1
        gateways[0].stop(kill=True)
        killed = time.monotonic()
        answer = chat(gateways[1], ALICE)
        waited = time.monotonic() - killed
    assert answer.status_code == 200, answer.text
    assert waited <= lease_secs + 1.0, waited


def test_a_slow_redis_is_waited_on_for_at_most_the_timeout(cluster, redis):
    gateways = cluster({LIMITED: {"user": "carol", "rpm": 100}}, timeout_ms=50)
    with ThreadPoolExecutor(max_workers=1) as pool:
        sleeping = pool.submit(redis.command, "DEBUG", "SLEEP", "2")
        time.sleep(0.2)
        started = time.monotonic()
        answer = chat(gateways[0], LIMITED, "echo/m")
        took = time.monotonic() - started
        assert answer.status_code == 200
        # Counted on this instance's share (100 / 3) while Redis keeps quiet.
        assert answer.headers["x-ratelimit-limit-requests"] == "34"
        assert took < 1.0, took
        sleeping.result()
    wait_for(lambda: gateways[0].health().get("redis") == "ok", 10, "redis answers again")
    wait_for(
        lambda: chat(gateways[0], LIMITED, "echo/m").headers["x-ratelimit-limit-requests"] == "100",
        5, "counted in Redis again")


def test_redis_stopped_then_restarted(cluster, redis):
    gateways = cluster({ALICE: "alice", LIMITED: {"user": "carol", "rpm": 100}})
    # Connections that were in use before Redis went away carry on after it is back.
    for gateway in gateways:
        for _ in range(4):
            assert chat(gateway, LIMITED, "echo/m").status_code == 200
    redis.stop()
    started = time.monotonic()
    answers = [chat(gateways[i % 3], ALICE, "echo/m").status_code for i in range(6)]
    assert answers == [200] * 6
    assert time.monotonic() - started < 5
    for gateway in gateways:
        wait_for(lambda: gateway.health().get("redis") == "unreachable", 5, "health says so")
    # The change is logged once, not per request.
    assert gateways[0].logs().count("unreachable (") == 1, gateways[0].logs()
    # A limited backend is served on this instance's share meanwhile.
    assert chat(gateways[1], ALICE).status_code == 200
    redis.start()
    for gateway in gateways:
        wait_for(lambda: gateway.health().get("redis") == "ok", 10, "redis is back")
    assert "shared again" in gateways[0].logs()
    # Shared counting resumes: each instance's requests are counted in Redis again.
    for gateway in gateways:
        assert chat(gateway, LIMITED, "echo/m").status_code == 200
    [window] = redis.command("KEYS", "switchyard:rpm:*")
    assert redis.command("ZCARD", window) == 3


def test_tokens_spent_at_one_gateway_count_at_the_others(cluster, redis):
    # The upstream's every answer uses 5 tokens: two answers spend a budget of 10.
    gateways = cluster({
        "sk-minute-0123456789": {"user": "dan", "tpm": 10},
        "sk-daily-01234567890": {"user": "eve", "tokens_per_day": 10},
    })
    for key, header in (("sk-minute-0123456789", "tpm"), ("sk-daily-01234567890", "day")):
        statuses = []
        for gateway in gateways:
            answer = chat(gateway, key)
            statuses.append(answer.status_code)
            # The tokens are charged just after the answer, off the request path.
            time.sleep(0.3)
        assert statuses == [200, 200, 429], (header, statuses)
        assert answer.headers["x-ratelimit-remaining-tokens"] == "0"
        assert int(answer.headers["retry-after"]) >= 1

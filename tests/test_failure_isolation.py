"""One agent's failure never holds up anyone else's recovery or deploy.

Worker exits are reaped on the launcher's thread and handed to agents on
another; an agent that gives up (breaker open) ends its surviving replicas
without waiting for them. Tried before this was so: 3 replicas with
`max_failures = 1` and two kills held the launcher thread for 5 s per
survivor, so another agent's crashed worker came back only after ~5-10 s
and a concurrent deploy stalled as long.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from caxton.v1 import caxton_pb2

from .harness import alive, module, wait_until

# Far below the 5 s the launcher thread used to be held per survivor, far
# above what a restart takes (10 ms backoff plus a forked worker).
PROMPT_S = 2.5


def _pids(sup, name: str) -> list[int]:
    return [i.pid for i in sup.status(name).instances]


def test_an_agent_giving_up_does_not_stall_others(supervisor):
    sup = supervisor()
    sup.lifecycle.DeployAgent(caxton_pb2.DeployAgentRequest(
        name="giving-up", module=module("echo"), replicas=3, restart=caxton_pb2.RestartPolicy(max_failures=1),
    ), timeout=60)
    sup.deploy("bystander", "echo")
    victims = _pids(sup, "giving-up")
    assert len(victims) == 3

    # Two failures in the window: the breaker opens and the agent gives up on
    # its surviving replicas. (Two kills at once would count as one failure:
    # the one restart tops up every missing replica.)
    os.kill(victims[0], signal.SIGKILL)
    wait_until(lambda: (pids := _pids(sup, "giving-up")) and len(pids) == 3 and victims[0] not in pids, PROMPT_S,
               "the first victim to be replaced")
    os.kill(victims[1], signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: sup.status("giving-up").state == caxton_pb2.AGENT_STATE_FAILED, PROMPT_S,
               "the agent to be FAILED")

    # Meanwhile another agent crashes, and someone deploys: both go ahead.
    (bystander,) = _pids(sup, "bystander")
    os.kill(bystander, signal.SIGKILL)
    deployed: list[float] = []
    deployer = threading.Thread(target=lambda: (sup.deploy("newcomer", "echo"), deployed.append(time.monotonic())))
    deployer.start()
    wait_until(lambda: _pids(sup, "bystander") not in ([], [bystander]), PROMPT_S, "the bystander's restart")
    assert sup.send("bystander", b"still here").reply.content == b"still here"
    deployer.join(30)
    assert deployed and deployed[0] - killed_at < 2 * PROMPT_S, "a concurrent deploy was held up"
    # The given-up agent's surviving replica was ended too.
    wait_until(lambda: not alive(victims[2]), PROMPT_S, "the given-up agent's surviving worker to exit")

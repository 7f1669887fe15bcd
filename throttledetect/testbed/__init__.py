"""Real-kernel testbed: calls through known throttling in network namespaces, captured with tcpdump.

- netns.py    two or three namespaces joined by veth pairs; tbf/htb/pfifo qdisc trees with u32 filters
- traffic.py  a paced synthetic call (STUN, RTP audio+video, RTCP, TCP and UDP control flows)
- run.py      `python -m throttledetect.testbed.run --scenario NAME --seconds S --out FILE.pcap`
              -> FILE.pcap + FILE.truth.json (configured throttling and measured loss/delay/rate)
- replay.py   any real capture played through the same kernel throttles (`throttledetect replay`,
              `replay_trial` for a validation harness); replay_plan.py (frames and sides),
              replay_net.py (namespaces carrying the capture's addresses, filters, netfilter),
              replay_send.py (the paced sender), replay_measure.py (sent vs captured)

Needs root, iproute2 and tcpdump; `netns.availability()` says whether this machine can run it.
"""
from throttledetect.testbed.netns import availability

__all__ = ["availability"]

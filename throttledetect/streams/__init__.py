"""The streams stage: what each direction of each flow carries, built once and shared.

Between flows/classification and metrics/detection (read -> flows -> classify -> streams ->
metrics -> detect -> report). For one flow and one direction it answers, lazily and cached:

- ``packets(i, d)``: arrival times, frame sizes, payload sizes (``DirectionPackets``);
- ``rtp(i, d)``: the RTP streams (one per SSRC), read from the headers the classifier located
  in any encapsulation, with extended sequence numbers and timestamps, the stream's clock and
  its one-way delay with the sender's clock skew removed (``RtpStream``, ``DelaySeries``);
- ``tcp(i, d)``: the data segments of a TCP direction with holes and resends (``TcpSegments``);
- ``cadence(i, d)``: the sending clock of a flow without readable RTP (``Cadence``): the frame
  interval of its periodic (voice) packets, their expected and received counts;
- ``srtcp(i, d)``: the SRTCP index of its RTCP packets, a counter in clear on encrypted calls
  (``SrtcpIndex``);
- ``loss(i, d)``: the direction's loss signal (``LossUnits``): RTP sequence gaps, TCP holes, the
  SRTCP index of a direction that is (nearly) all RTCP, or slots of the cadence left empty,
  whichever the flow has (in that order of trust);
- ``delay(i, d)``: one-way delay against the sender's clock (RTP timestamps, or the cadence).

Times are float seconds since the capture's first packet; sizes are link-layer frame bytes
(``wirelen``). Directions are 0 = a->b, 1 = b->a (FlowTable.dir_of); ``toward_local(i)`` says
which of them arrives at the capturing host.
"""
from throttledetect.streams.build import Streams, build_streams
from throttledetect.streams.loss import LossUnits, merge_loss
from throttledetect.streams.packets import DirectionPackets
from throttledetect.streams.rtp import DelaySeries, RtpStream

__all__ = ["Streams", "build_streams", "LossUnits", "merge_loss", "DirectionPackets", "RtpStream", "DelaySeries"]

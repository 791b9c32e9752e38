"""Copy a video stream into a fresh MP4 without re-encoding it (remux), byte-deterministically.

Used by ingest for an H.264 source that already meets the shard limits: re-encoding it would cost
CPU time and quality for nothing. Only the first video stream is copied (audio, subtitles and data
streams are dropped) and no metadata travels: the container and stream metadata of the source
(``creation_time``, ``encoder``, handler names, ...) are not copied, and the muxer runs in
``bitexact`` mode (no ``Lavf`` version string), so the output is a function of the video packets
alone: the same stream in two files with different metadata remuxes to identical bytes.
"""

from __future__ import annotations

import io

import av

from pipeline.core.errors import VideoError
from pipeline.video.probe import VideoSource, error_detail, open_container, video_stream


def remux_video(source: VideoSource, max_packets: int | None = None) -> tuple[bytes, int]:
    """``(mp4 bytes, packets copied)``: the first video stream of ``source`` in a new MP4.

    Raises VideoError when the stream cannot be demuxed or muxed as it is (the caller transcodes
    instead), or when it holds more than ``max_packets`` packets.
    """
    with open_container(source) as container:
        stream = video_stream(container)
        buf = io.BytesIO()
        count = 0
        try:
            with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as out:
                ost = out.add_stream_from_template(stream)
                ost.metadata.clear()
                out.metadata.clear()
                for packet in container.demux(stream):
                    if packet.dts is None or not packet.size:  # the demuxer's final flush packet
                        continue
                    count += 1
                    if max_packets is not None and count > max_packets:
                        raise VideoError(f"absurd size: more than {max_packets} frames exceeds limit")
                    packet.stream = ost
                    out.mux(packet)
        except (av.error.FFmpegError, ValueError) as exc:
            raise VideoError(f"remux failed after {count} packets: {error_detail(exc)}") from exc
    if count == 0:
        raise VideoError("remux failed: no video packets")
    return buf.getvalue(), count

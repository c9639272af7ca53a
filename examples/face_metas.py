#!/usr/bin/python3
"""Reading gpenfilter's faces from the buffers of an appsink with PyGObject: each face is a
GstVideoRegionOfInterestMeta of type "face" whose id is the face's track id, with a "gpenfilter"
parameter structure (score, box, landmarks, restored, track-id).

    export GST_PLUGIN_PATH=$PWD/target/release                # where libgstgpen.so is
    /usr/bin/python3 examples/face_metas.py VIDEO [gpenfilter PROPERTY=VALUE ...]

Prints one line per face per frame, then a summary; exits 0 at EOS, 1 on an error, 2 on bad
arguments or when the plugin is not found.
"""
import sys
import warnings

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstVideo  # noqa: E402


def quark_name(quark):
    return GLib.quark_to_string(quark)


def doubles(structure, field):
    """An array of doubles: without gst-python's overrides, arrays (GstValueArray) come to Python
    only through get_array, as a GValueArray (whose get_nth PyGObject marks deprecated)."""
    _, array = structure.get_array(field)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [array.get_nth(i) for i in range(array.n_values)]


def faces_of(buffer, tracks):
    """The face metas of a buffer. PyGObject cannot walk a buffer's metas on GStreamer 1.22, but
    gpenfilter's are found by id: track ids run from 1 to the element's tracks-started."""
    for track in range(1, tracks + 1):
        meta = GstVideo.buffer_get_video_region_of_interest_meta_id(buffer, track)
        if meta is None or quark_name(meta.roi_type) != "face":
            continue
        params = meta.get_param("gpenfilter")
        if params is not None:
            yield meta, params


def main(argv):
    if len(argv) < 2:
        print("usage: face_metas.py VIDEO [gpenfilter PROPERTY=VALUE ...]", file=sys.stderr)
        return 2
    Gst.init(None)
    pipeline = Gst.parse_launch(
        "filesrc name=src ! decodebin ! videoconvert ! gpenfilter name=gpen ! appsink name=sink sync=false emit-signals=false"
    ) if Gst.ElementFactory.find("gpenfilter") else None
    if pipeline is None:
        print("face_metas.py: gpenfilter not found: set GST_PLUGIN_PATH to the folder of libgstgpen.so", file=sys.stderr)
        return 2
    gpen = pipeline.get_by_name("gpen")
    pipeline.get_by_name("src").set_property("location", argv[1])
    for kv in argv[2:]:
        key, sep, value = kv.partition("=")
        if not sep or gpen.find_property(key) is None:
            print(f"face_metas.py: {kv}: not a gpenfilter PROPERTY=VALUE", file=sys.stderr)
            return 2
        Gst.util_set_object_arg(gpen, key, value)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames = faces = 0
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:  # EOS or an error
            break
        buffer = sample.get_buffer()
        tracks = gpen.get_property("stats").get_value("tracks-started")
        for meta, p in faces_of(buffer, tracks):
            landmarks = ", ".join(f"{v:.1f}" for v in doubles(p, "landmarks"))
            print(
                f"frame {frames} face {meta.id}: box {meta.x},{meta.y} {meta.w}x{meta.h} score {p.get_value('score'):.3f} "
                f"restored {p.get_value('restored')} landmarks [{landmarks}]",
                flush=True,
            )
            faces += 1
        frames += 1
    msg = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if msg is not None:
        err, debug = msg.parse_error()
        print(f"face_metas.py: {err.message} ({debug})", file=sys.stderr)
        return 1
    print(f"faces (final): {faces} in {frames} frames", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

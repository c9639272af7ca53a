#!/usr/bin/python3
"""Embedding gpenfilter in a Python application with PyGObject: build a pipeline, run it, and
follow what the element does from the bus (gpenfilter-stats element messages, QoS messages for
dropped frames, errors).

    sudo apt-get install python3-gi gir1.2-gstreamer-1.0     # Debian's PyGObject
    export GST_PLUGIN_PATH=$PWD/target/release                # where libgstgpen.so is
    /usr/bin/python3 examples/bus_stats.py VIDEO [gpenfilter PROPERTY=VALUE ...]

Prints one line per statistics message; exits 0 at EOS, 1 on an error, 2 on bad arguments or
when the plugin is not found.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402


def main(argv):
    if len(argv) < 2:
        print("usage: bus_stats.py VIDEO [gpenfilter PROPERTY=VALUE ...]", file=sys.stderr)
        return 2
    Gst.init(None)
    pipeline = Gst.Pipeline.new("restore")
    src = Gst.ElementFactory.make("filesrc")
    decode = Gst.ElementFactory.make("decodebin")
    convert = Gst.ElementFactory.make("videoconvert")
    gpen = Gst.ElementFactory.make("gpenfilter")
    sink = Gst.ElementFactory.make("fakesink")
    if gpen is None:
        print("bus_stats.py: gpenfilter not found: set GST_PLUGIN_PATH to the folder of libgstgpen.so", file=sys.stderr)
        return 2
    src.set_property("location", argv[1])
    gpen.set_property("post-messages", True)
    for kv in argv[2:]:
        key, sep, value = kv.partition("=")
        pspec = gpen.find_property(key) if sep else None
        if pspec is None:
            print(f"bus_stats.py: {kv}: not a gpenfilter PROPERTY=VALUE", file=sys.stderr)
            return 2
        # Strings as gst-launch takes them (enums by nick, numbers, booleans).
        Gst.util_set_object_arg(gpen, key, value)
    for e in (src, decode, convert, gpen, sink):
        pipeline.add(e)
    src.link(decode)
    convert.link(gpen)
    gpen.link(sink)

    def on_pad(_decodebin, pad):
        caps = pad.query_caps(None)
        target = convert.get_static_pad("sink")
        if caps.get_structure(0).get_name().startswith("video/") and not target.is_linked():
            pad.link(target)

    decode.connect("pad-added", on_pad)
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    code = 0
    while True:
        msg = bus.timed_pop(Gst.CLOCK_TIME_NONE)
        if msg.type == Gst.MessageType.ELEMENT and msg.get_structure().get_name() == "gpenfilter-stats":
            s = msg.get_structure()
            final = " (final)" if s.get_value("eos") else ""
            print(
                f"stats{final}: frames in {s.get_value('frames-in')} out {s.get_value('frames-out')} "
                f"dropped {s.get_value('frames-dropped')} passed-through {s.get_value('frames-passed-through')}, "
                f"faces restored {s.get_value('faces-restored')}, plan {s.get_value('plan')}, "
                f"{s.get_value('mean-ms'):.1f} ms/frame (worst {s.get_value('worst-ms'):.1f})",
                flush=True,
            )
        elif msg.type == Gst.MessageType.QOS:
            _fmt, _processed, dropped = msg.parse_qos_stats()
            print(f"qos: a frame was dropped ({dropped} dropped so far)", flush=True)
        elif msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            print(f"bus_stats.py: {err.message} ({debug})", file=sys.stderr)
            code = 1
            break
        elif msg.type == Gst.MessageType.EOS:
            break
    pipeline.set_state(Gst.State.NULL)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))

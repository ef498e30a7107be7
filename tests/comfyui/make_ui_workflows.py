"""Rebuild ``example_workflows/*.json`` (ComfyUI's UI format) from ``example_workflows/api/*.json``.

The UI format is what ComfyUI's front end writes, so it is produced by that front end: a real ComfyUI (see
``comfyui_server.py``) is started, headless Chromium builds each API-format graph node by node with LiteGraph, and
``app.graph.serialize()`` is saved.  Run it after changing a node's inputs or an API example::

    python tests/comfyui/make_ui_workflows.py

``BUILD_GRAPH_JS`` is also used by the browser test to check that each UI file serialises back to its API file.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXAMPLES = ROOT / "example_workflows"
COLUMN = 400   # horizontal spacing of the layout (nodes are placed by their depth in the graph)
MIN_WIDTH = 360   # node width that shows every widget label in full (computeSize is narrower on some front-ends)
NOTE = ("Put your photo in the Load Image node (ComfyUI's example.png has no face: it passes through unchanged). "
        "facedetection 'auto' uses whichever RetinaFace file you have (detection_Resnet50_Final.pth or "
        "detection_mobilenet0.25_Final.pth in models/facedetection). The 'fidelity' widget, shown as 'style prompt "
        "mix', is 1 for the official VSPBFR result; lower values stay closer to the input face. Model files: "
        "models/vspbfr (see the pack's README).")
NOTES = {"vspbfr_segs": " SEGS: any Impact-Pack SEGS detector (e.g. BBOX Detector (SEGS) with a YOLO face model, or "
         "SAM / mediapipe) can feed VSPBFR SEGS to Faces instead of VSPBFR Faces to SEGS; the paste then changes "
         "pixels only inside the SEG masks."}       # added to NOTE for that example

# (prompt, layout, min width, note) -> serialised LiteGraph workflow; widgets are set by name, links by input name;
# a Note node (front-end only, not part of the prompt) explains what to change.
BUILD_GRAPH_JS = r"""
(async ([prompt, layout, minWidth, note]) => {
  app.graph.clear();
  const nodes = {};
  for (const [id, spec] of Object.entries(prompt)) {
    const node = LiteGraph.createNode(spec.class_type);
    if (!node) throw new Error("unknown node type " + spec.class_type);
    node.pos = layout[id];
    app.graph.add(node);
    nodes[id] = node;
    for (const [name, value] of Object.entries(spec.inputs)) {
      if (Array.isArray(value)) continue;
      const widget = node.widgets?.find((w) => w.name === name);
      if (!widget) throw new Error(spec.class_type + " has no widget " + name);
      widget.value = value;
    }
    const control = node.widgets?.find((w) => w.name === "control_after_generate");
    if (control) control.value = "fixed";
  }
  for (const [id, spec] of Object.entries(prompt)) {
    for (const [name, value] of Object.entries(spec.inputs)) {
      if (!Array.isArray(value)) continue;
      const slot = nodes[id].findInputSlot(name);
      if (slot < 0) throw new Error(spec.class_type + " has no input " + name);
      nodes[value[0]].connect(value[1], nodes[id], slot);
    }
  }
  for (const node of Object.values(nodes)) {
    const size = node.computeSize();
    node.setSize([Math.max(size[0], minWidth), size[1]]);
  }
  const help = LiteGraph.createNode("Note");
  help.pos = [40, 60 + 380 * 2];
  help.widgets[0].value = note;
  app.graph.add(help);
  help.setSize([minWidth, 200]);
  return JSON.stringify(app.graph.serialize());
})
"""

# Loads a UI workflow and returns the API prompt the front end makes of it.
GRAPH_TO_PROMPT_JS = r"""
(async (workflow) => {
  await app.loadGraphData(workflow);
  const p = await app.graphToPrompt();
  return JSON.stringify(p.output);
})
"""


def layout(prompt: dict) -> dict[str, list[int]]:
    depth: dict[str, int] = {}

    def d(nid: str) -> int:
        if nid not in depth:
            ups = [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((d(u) for u in ups), default=-1)
        return depth[nid]

    rows: dict[int, int] = {}
    out = {}
    for nid in prompt:
        col = d(nid)
        out[nid] = [40 + COLUMN * col, 60 + 380 * rows.get(col, 0)]
        rows[col] = rows.get(col, 0) + 1
    return out


def main() -> int:
    sys.path.insert(0, str(HERE))
    from comfyui_browser import Chromium
    from comfyui_server import ComfyServer, comfy_python, fetch_core

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = ComfyServer(comfy_python(), fetch_core(work / "core"), ROOT, work)
        server.start()
        browser = None
        try:
            browser = Chromium(server.url + "/", work)
            browser.wait_for("window.app && window.LiteGraph && LiteGraph.registered_node_types.VSPBFRFaceRestore")
            for api_file in sorted((EXAMPLES / "api").glob("*.json")):
                prompt = json.loads(api_file.read_text())
                arg = json.dumps([prompt, layout(prompt), MIN_WIDTH, NOTE + NOTES.get(api_file.stem, "")])
                workflow = json.loads(browser.evaluate(f"{BUILD_GRAPH_JS}({arg})"))
                (EXAMPLES / api_file.name).write_text(json.dumps(workflow, indent=2) + "\n")
                print(f"wrote {EXAMPLES / api_file.name}")
        finally:
            if browser is not None:
                browser.stop()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

// VSPBFR node pack: UI sugar only. The Python nodes work the same without this file.
//  - VSPBFRRestoreFaces / VSPBFRFaceRestore: a before/after comparison slider over the output in the node
//    (ui key "vspbfr_compare": [{before, after}] with /view image references).
//  - VSPBFRDetectFaces: the first frame with every detected box and its index drawn on top, so a selection such as
//    "0,2" is easy to write (ui key "vspbfr_faces": [{image, width, height, frames, count, faces: [{index, box, score}]}]).
//  - Nodes with a seed start with "control after generate" = fixed, so re-queuing does not re-restore every face.
//  - The "fidelity" widget is labelled "style prompt mix (1 = official)" (see LABELS).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const EXTENSION = "VSPBFR.FaceRestore";
const SEEDED = new Set(["VSPBFRStylePrompt", "VSPBFRRestoreFaces", "VSPBFRFaceRestore"]);
// Widgets shown under another name than the one saved in workflows (which stays, so saved graphs keep working):
// "fidelity" is the style prompt mix, 1 = the official diffused prompt, and must not be read as CodeFormer's
// fidelity, whose 1 means "closest to the input".
const LABELS = { fidelity: "style prompt mix (1 = official)" };
const PANEL_HEIGHT = 220;
const SVG = "http://www.w3.org/2000/svg";

const STYLE = `
.vspbfr-panel { position: relative; overflow: hidden; background: #111; border-radius: 4px; user-select: none; }
.vspbfr-panel img { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: contain; pointer-events: none; }
.vspbfr-panel svg { position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none; }
.vspbfr-panel .vspbfr-divider { position: absolute; top: 0; bottom: 0; width: 2px; background: #fff; opacity: .8;
  pointer-events: none; transform: translateX(-1px); }
.vspbfr-panel .vspbfr-label { position: absolute; top: 4px; font: 11px sans-serif; color: #fff; background: #0008;
  padding: 1px 4px; border-radius: 3px; pointer-events: none; }
.vspbfr-panel input.vspbfr-slider { position: absolute; left: 4%; width: 92%; bottom: 2px; margin: 0; }
.vspbfr-panel .vspbfr-caption { position: absolute; left: 4px; bottom: 2px; font: 11px sans-serif; color: #fff;
  background: #0008; padding: 1px 4px; border-radius: 3px; pointer-events: none; }
`;

function addStyle() {
  if (document.getElementById("vspbfr-style")) return;
  const el = document.createElement("style");
  el.id = "vspbfr-style";
  el.textContent = STYLE;
  document.head.append(el);
}

function viewUrl(ref) {
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type ?? "temp" });
  return api.apiURL(`/view?${q}&rand=${Math.random()}`);
}

function el(tag, className, parent) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  parent?.append(e);
  return e;
}

// One DOM widget per node, created on the first result, refilled on every later one.
function panel(node, kind) {
  if (node.vspbfrPanel?.kind === kind) return node.vspbfrPanel.root;
  addStyle();
  const root = el("div", `vspbfr-panel vspbfr-${kind}`);
  root.dataset.vspbfr = kind;
  node.addDOMWidget(`vspbfr_${kind}`, `vspbfr_${kind}`, root, {
    serialize: false, hideOnZoom: false, getValue: () => undefined, setValue: () => {},
    getMinHeight: () => PANEL_HEIGHT, getHeight: () => PANEL_HEIGHT,
  });
  node.vspbfrPanel = { kind, root };
  node.setSize([Math.max(node.size[0], 320), node.size[1] + PANEL_HEIGHT]);
  node.setDirtyCanvas?.(true, true);
  return root;
}

function showCompare(node, data) {
  const root = panel(node, "compare");
  root.replaceChildren();
  const after = el("img", "vspbfr-after", root);
  const before = el("img", "vspbfr-before", root);
  const divider = el("div", "vspbfr-divider", root);
  const left = el("span", "vspbfr-label", root);
  const right = el("span", "vspbfr-label", root);
  left.textContent = "before";
  left.style.left = "4px";
  right.textContent = "after";
  right.style.right = "4px";
  const slider = el("input", "vspbfr-slider", root);
  Object.assign(slider, { type: "range", min: 0, max: 100, step: 0.1, value: 50 });
  const set = (pct) => {
    pct = Math.min(100, Math.max(0, pct));
    before.style.clipPath = `inset(0 ${100 - pct}% 0 0)`;
    divider.style.left = `${pct}%`;
    slider.value = pct;
    root.dataset.split = String(pct);
  };
  slider.addEventListener("input", () => set(Number(slider.value)));
  root.addEventListener("pointermove", (e) => {
    if (e.target === slider) return;
    const r = root.getBoundingClientRect();
    if (r.width > 0) set(((e.clientX - r.left) / r.width) * 100);
  });
  after.src = viewUrl(data.after);
  before.src = viewUrl(data.before);
  set(50);
}

function showFaces(node, data) {
  const root = panel(node, "faces");
  root.replaceChildren();
  el("img", "vspbfr-frame", root).src = viewUrl(data.image);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${data.width} ${data.height}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const stroke = Math.max(2, Math.round(Math.max(data.width, data.height) / 300));
  for (const face of data.faces) {
    const [x1, y1, x2, y2] = face.box;
    const rect = document.createElementNS(SVG, "rect");
    Object.entries({ x: x1, y: y1, width: x2 - x1, height: y2 - y1, fill: "none", stroke: "#3f3",
                     "stroke-width": stroke }).forEach(([k, v]) => rect.setAttribute(k, v));
    const label = document.createElementNS(SVG, "text");
    const size = Math.max(Math.round(Math.max(data.width, data.height) / 16), Math.round((y2 - y1) / 3));
    Object.entries({ x: x1 + stroke, y: y1 - stroke >= size ? y1 - stroke : y1 + size, fill: "#3f3", "font-size": size,
                     "font-family": "sans-serif", "font-weight": "bold", stroke: "#000", "stroke-width": stroke / 2,
                     "paint-order": "stroke" }).forEach(([k, v]) => label.setAttribute(k, v));
    label.textContent = String(face.index);
    label.classList.add("vspbfr-index");
    rect.classList.add("vspbfr-box");
    svg.append(rect, label);
  }
  root.append(svg);
  const caption = el("span", "vspbfr-caption", root);
  caption.textContent = `${data.count} face(s) in ${data.frames} frame(s); boxes of frame 0`;
}

// A host that serves this file twice (a pack folder not named like the project, with a web folder declared both in
// pyproject and in WEB_DIRECTORY on some cores) must not wrap every node's callbacks twice: register once.
if (app.extensions?.some((e) => e.name === EXTENSION)) {
  console.info(`[VSPBFR] ${EXTENSION} is already registered; skipping the second copy of this script`);
} else app.registerExtension({
  name: EXTENSION,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("VSPBFR")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      if (message?.vspbfr_compare?.length) showCompare(this, message.vspbfr_compare[0]);
      if (message?.vspbfr_faces?.length) showFaces(this, message.vspbfr_faces[0]);
      return r;
    };
    const seeded = SEEDED.has(nodeData.name);
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      if (seeded) {
        const control = this.widgets?.find((w) => w.name === "control_after_generate");
        if (control) control.value = "fixed";
      }
      for (const w of this.widgets ?? []) if (LABELS[w.name]) w.label = LABELS[w.name];
      return r;
    };
  },
});

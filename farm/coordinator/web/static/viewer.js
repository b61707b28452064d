// A small WebGL viewer for a build's STL or 3MF: orbit (drag, or the arrow keys), zoom (wheel, or +
// and -). No library: an STL is a list of triangles, one shaded draw call shows it; a 3MF is a zip
// (the browser's DecompressionStream inflates it) of XML with one mesh per object, each drawn in
// its own colour.
"use strict";

window.FarmViewer = (() => {
  // Binary STL: 80-byte header, a count, 50 bytes a triangle. ASCII otherwise ("solid ... facet ...").
  function parseSTL(buffer) {
    const view = new DataView(buffer);
    const count = buffer.byteLength >= 84 ? view.getUint32(80, true) : 0;
    const points = [];
    if (84 + count * 50 === buffer.byteLength) {
      for (let i = 0; i < count; i++) {
        const at = 84 + i * 50 + 12; // skip the stored normal: it is often zero
        for (let k = 0; k < 9; k++) points.push(view.getFloat32(at + k * 4, true));
      }
    } else {
      const text = new TextDecoder().decode(buffer);
      for (const m of text.matchAll(/vertex\s+(\S+)\s+(\S+)\s+(\S+)/g)) points.push(+m[1], +m[2], +m[3]);
    }
    return withNormals(new Float32Array(points));
  }

  // Flat shading: each triangle's three corners get its face normal.
  function withNormals(positions) {
    const normals = new Float32Array(positions.length);
    for (let i = 0; i < positions.length; i += 9) {
      const [ax, ay, az, bx, by, bz, cx, cy, cz] = positions.subarray(i, i + 9);
      const ux = bx - ax, uy = by - ay, uz = bz - az, vx = cx - ax, vy = cy - ay, vz = cz - az;
      let nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
      const len = Math.hypot(nx, ny, nz) || 1;
      nx /= len; ny /= len; nz /= len;
      for (let k = 0; k < 3; k++) normals.set([nx, ny, nz], i + k * 3);
    }
    return { positions, normals };
  }

  // The zip's central directory names each member with its method, size and offset (the sizes
  // in a local header may be deferred to after the data; the central directory's never are).
  function zipDirectory(buffer) {
    const view = new DataView(buffer);
    let end = buffer.byteLength - 22;
    while (end >= 0 && view.getUint32(end, true) !== 0x06054b50) end--;
    if (end < 0) throw new Error("not a zip archive");
    let at = view.getUint32(end + 16, true);
    const count = view.getUint16(end + 10, true);
    const members = [];
    for (let i = 0; i < count; i++) {
      if (view.getUint32(at, true) !== 0x02014b50) throw new Error("a damaged zip directory");
      const method = view.getUint16(at + 10, true), nameLen = view.getUint16(at + 28, true);
      const extraLen = view.getUint16(at + 30, true), commentLen = view.getUint16(at + 32, true);
      let size = view.getUint32(at + 20, true), offset = view.getUint32(at + 42, true);
      const name = new TextDecoder().decode(new Uint8Array(buffer, at + 46, nameLen));
      // Made on Unix (the high byte of "version made by" is 3): the file's mode is in the top half.
      const mode = view.getUint8(at + 5) === 3 ? view.getUint32(at + 38, true) >>> 16 : 0;
      // Zip64: the real values follow in the extra field, in this order, for those marked 0xffffffff.
      for (let e = at + 46 + nameLen; e < at + 46 + nameLen + extraLen; e += 4 + view.getUint16(e + 2, true)) {
        if (view.getUint16(e, true) !== 1) continue;
        let k = e + 4;
        if (view.getUint32(at + 24, true) === 0xffffffff) k += 8;
        if (size === 0xffffffff) { size = Number(view.getBigUint64(k, true)); k += 8; }
        if (offset === 0xffffffff) offset = Number(view.getBigUint64(k, true));
      }
      members.push({ name, method, size, offset, mode, link: (mode & 0o170000) === 0o120000 });
      at += 46 + nameLen + extraLen + commentLen;
    }
    return members;
  }

  async function inflate(buffer, member) {
    const view = new DataView(buffer), offset = member.offset;
    const start = offset + 30 + view.getUint16(offset + 26, true) + view.getUint16(offset + 28, true);
    const data = new Uint8Array(buffer, start, member.size);
    if (member.method === 0) return data;
    if (member.method !== 8) throw new Error(`${member.name}: zip method ${member.method} is not deflate`);
    const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function unzip(buffer, wanted) {
    const member = zipDirectory(buffer).find((m) => m.name === wanted);
    if (!member) throw new Error(`the archive has no ${wanted}`);
    return inflate(buffer, member);
  }

  // Every file of a zip (folders and symbolic links left out), as [{name, data}].
  async function unzipAll(buffer) {
    const files = zipDirectory(buffer).filter((m) => !m.name.endsWith("/") && !m.link);
    return Promise.all(files.map(async (m) => ({ name: m.name, data: await inflate(buffer, m) })));
  }

  // 3MF core: each <object> with a <mesh> is one part, named, coloured by its basematerials entry.
  // Items with a transform are placed by it; an object no item places is still shown.
  async function parse3MF(buffer) {
    const xml = new DOMParser().parseFromString(new TextDecoder().decode(await unzip(buffer, "3D/3dmodel.model")), "application/xml");
    if (xml.querySelector("parsererror")) throw new Error("the 3MF model is not XML");
    const colors = new Map();
    for (const group of xml.getElementsByTagName("basematerials")) {
      colors.set(group.getAttribute("id"), [...group.getElementsByTagName("base")].map((b) => b.getAttribute("displaycolor")));
    }
    const transforms = new Map();
    for (const item of xml.getElementsByTagName("item")) {
      const t = (item.getAttribute("transform") || "").trim().split(/\s+/).map(Number);
      if (t.length === 12 && t.every(Number.isFinite)) transforms.set(item.getAttribute("objectid"), t);
    }
    const objects = [];
    for (const obj of xml.getElementsByTagName("object")) {
      const mesh = obj.getElementsByTagName("mesh")[0];
      if (!mesh) continue;
      const v = [...mesh.getElementsByTagName("vertex")].map((n) => [+n.getAttribute("x"), +n.getAttribute("y"), +n.getAttribute("z")]);
      const t = transforms.get(obj.getAttribute("id"));
      const placed = t ? v.map(([x, y, z]) => [x * t[0] + y * t[3] + z * t[6] + t[9], x * t[1] + y * t[4] + z * t[7] + t[10], x * t[2] + y * t[5] + z * t[8] + t[11]]) : v;
      const tris = mesh.getElementsByTagName("triangle");
      const positions = new Float32Array(tris.length * 9);
      let i = 0;
      for (const tri of tris) {
        for (const key of ["v1", "v2", "v3"]) { positions.set(placed[+tri.getAttribute(key)], i); i += 3; }
      }
      const hex = (colors.get(obj.getAttribute("pid")) || [])[+obj.getAttribute("pindex") || 0];
      objects.push({ name: obj.getAttribute("name") || `object ${obj.getAttribute("id")}`, color: hex ? rgb(hex) : null, ...withNormals(positions) });
    }
    if (!objects.length) throw new Error("the 3MF has no mesh");
    return objects;
  }

  // "#RRGGBB" or "#RRGGBBAA" as three 0..1 floats.
  function rgb(hex) {
    const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})/i.exec(hex);
    return m ? [1, 2, 3].map((k) => parseInt(m[k], 16) / 255) : null;
  }

  // Parts without a colour of their own: the farm's orange first, then colours far from it.
  const PALETTE = [[0.91, 0.49, 0.13], [0.18, 0.45, 0.85], [0.22, 0.65, 0.33], [0.62, 0.3, 0.75], [0.85, 0.2, 0.3], [0.1, 0.65, 0.7]];
  const colorOf = (mesh, i) => mesh.color || PALETTE[i % PALETTE.length];

  function bounds(positions) {
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (let i = 0; i < positions.length; i += 3) {
      for (let k = 0; k < 3; k++) {
        lo[k] = Math.min(lo[k], positions[i + k]);
        hi[k] = Math.max(hi[k], positions[i + k]);
      }
    }
    const center = lo.map((v, k) => (v + hi[k]) / 2);
    return { center, radius: Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) / 2 || 1 };
  }

  // Column-major 4x4 matrices, as WebGL takes them.
  function perspective(fovy, aspect, near, far) {
    const f = 1 / Math.tan(fovy / 2), nf = 1 / (near - far);
    return [f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * nf, -1, 0, 0, 2 * far * near * nf, 0];
  }
  function multiply(a, b) {
    const out = new Array(16).fill(0);
    for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) for (let k = 0; k < 4; k++) out[c * 4 + r] += a[k * 4 + r] * b[c * 4 + k];
    return out;
  }
  // The camera orbits the part: yaw about the printer's Z (up), pitch above the bed.
  function view(yaw, pitch, distance, center) {
    const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    // Rows of the rotation: x = right, y = up (back x right), z = from the part towards the camera.
    const right = [cy, sy, 0], up = [-sy * sp, cy * sp, cp], back = [sy * cp, -cy * cp, sp];
    const t = (row) => -(row[0] * center[0] + row[1] * center[1] + row[2] * center[2]);
    return [
      right[0], up[0], back[0], 0,
      right[1], up[1], back[1], 0,
      right[2], up[2], back[2], 0,
      t(right), t(up), t(back) - distance, 1,
    ];
  }

  const VERTEX = `attribute vec3 position; attribute vec3 normal; uniform mat4 mvp; uniform mat4 modelView;
    varying vec3 vNormal; void main() { vNormal = (modelView * vec4(normal, 0.0)).xyz; gl_Position = mvp * vec4(position, 1.0); }`;
  const FRAGMENT = `precision mediump float; varying vec3 vNormal; uniform vec3 color;
    void main() { vec3 n = normalize(vNormal); float light = 0.35 + 0.65 * abs(dot(n, normalize(vec3(0.4, 0.6, 1.0))));
      gl_FragColor = vec4(color * light, 1.0); }`;

  function compile(gl, kind, source) {
    const shader = gl.createShader(kind);
    gl.shaderSource(shader, source);
    gl.compileShader(shader);
    if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
    return shader;
  }

  // Draws `meshes` (one, or a 3MF's objects: {positions, normals, color?}) into `canvas` and wires
  // the controls; returns a function that stops it.
  function show(canvas, meshes) {
    if (!Array.isArray(meshes)) meshes = [meshes];
    const gl = canvas.getContext("webgl", { antialias: true, preserveDrawingBuffer: true });
    if (!gl) throw new Error("this browser has no WebGL");
    const program = gl.createProgram();
    gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    gl.useProgram(program);
    const buffers = meshes.map((mesh) => Object.fromEntries([["position", mesh.positions], ["normal", mesh.normals]].map(([name, data]) => {
      const buffer = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
      return [name, buffer];
    })));
    const all = new Float32Array(meshes.reduce((n, m) => n + m.positions.length, 0));
    meshes.reduce((at, m) => { all.set(m.positions, at); return at + m.positions.length; }, 0);
    const { center, radius } = bounds(all);
    const state = { yaw: -0.6, pitch: 0.5, distance: radius * 3 };
    const dark = matchMedia("(prefers-color-scheme: dark)").matches;
    const draw = () => {
      const w = canvas.clientWidth, h = canvas.clientHeight;
      canvas.width = w * devicePixelRatio;
      canvas.height = h * devicePixelRatio;
      gl.viewport(0, 0, canvas.width, canvas.height);
      gl.enable(gl.DEPTH_TEST);
      gl.clearColor(...(dark ? [0.09, 0.11, 0.14, 1] : [0.96, 0.97, 0.98, 1]));
      gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
      const modelView = view(state.yaw, state.pitch, state.distance, center);
      const projection = perspective(Math.PI / 4, w / h || 1, radius / 50, radius * 50);
      gl.uniformMatrix4fv(gl.getUniformLocation(program, "mvp"), false, multiply(projection, modelView));
      gl.uniformMatrix4fv(gl.getUniformLocation(program, "modelView"), false, modelView);
      meshes.forEach((mesh, i) => {
        for (const name of ["position", "normal"]) {
          gl.bindBuffer(gl.ARRAY_BUFFER, buffers[i][name]);
          const at = gl.getAttribLocation(program, name);
          gl.enableVertexAttribArray(at);
          gl.vertexAttribPointer(at, 3, gl.FLOAT, false, 0, 0);
        }
        gl.uniform3fv(gl.getUniformLocation(program, "color"), colorOf(mesh, i));
        gl.drawArrays(gl.TRIANGLES, 0, mesh.positions.length / 3);
      });
    };
    let drag = null;
    const handlers = {
      pointerdown: (e) => { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); },
      pointerup: () => { drag = null; },
      pointermove: (e) => {
        if (!drag) return;
        state.yaw -= (e.clientX - drag[0]) * 0.01;
        state.pitch = Math.max(-1.5, Math.min(1.5, state.pitch + (e.clientY - drag[1]) * 0.01));
        drag = [e.clientX, e.clientY];
        draw();
      },
      wheel: (e) => { e.preventDefault(); state.distance *= e.deltaY > 0 ? 1.1 : 1 / 1.1; draw(); },
      keydown: (e) => {
        const moves = { ArrowLeft: () => (state.yaw += 0.1), ArrowRight: () => (state.yaw -= 0.1),
          ArrowUp: () => (state.pitch = Math.min(1.5, state.pitch + 0.1)), ArrowDown: () => (state.pitch = Math.max(-1.5, state.pitch - 0.1)),
          "+": () => (state.distance /= 1.1), "=": () => (state.distance /= 1.1), "-": () => (state.distance *= 1.1) };
        if (moves[e.key]) { e.preventDefault(); moves[e.key](); draw(); }
      },
    };
    for (const [name, handler] of Object.entries(handlers)) canvas.addEventListener(name, handler, { passive: name.startsWith("pointer") });
    draw();
    canvas.dataset.triangles = String(all.length / 9);
    canvas.dataset.objects = String(meshes.length);
    return () => { for (const [name, handler] of Object.entries(handlers)) canvas.removeEventListener(name, handler); };
  }

  return { parseSTL, parse3MF, show, colorOf, unzipAll };
})();

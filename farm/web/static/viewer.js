// A small WebGL viewer for a build's STL: orbit (drag, or the arrow keys), zoom (wheel, or + and -).
// No library: an STL is a list of triangles, and one shaded draw call shows it.
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
    const positions = new Float32Array(points);
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

  // Draws `mesh` into `canvas` and wires the controls; returns a function that stops it.
  function show(canvas, mesh) {
    const gl = canvas.getContext("webgl", { antialias: true, preserveDrawingBuffer: true });
    if (!gl) throw new Error("this browser has no WebGL");
    const program = gl.createProgram();
    gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    gl.useProgram(program);
    for (const [name, data] of [["position", mesh.positions], ["normal", mesh.normals]]) {
      const buffer = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
      gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
      const at = gl.getAttribLocation(program, name);
      gl.enableVertexAttribArray(at);
      gl.vertexAttribPointer(at, 3, gl.FLOAT, false, 0, 0);
    }
    const { center, radius } = bounds(mesh.positions);
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
      gl.uniform3fv(gl.getUniformLocation(program, "color"), [0.91, 0.49, 0.13]);
      gl.drawArrays(gl.TRIANGLES, 0, mesh.positions.length / 3);
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
    canvas.dataset.triangles = String(mesh.positions.length / 9);
    return () => { for (const [name, handler] of Object.entries(handlers)) canvas.removeEventListener(name, handler); };
  }

  return { parseSTL, show };
})();

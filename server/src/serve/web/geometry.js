// The canvas rule of SPEC 1.1/1.2 and the image limits of SPEC 1.3, checked in the order and
// with the words the server uses (crates/canvas, crates/engine), so that the page refuses
// before submitting exactly what the server would refuse. The message templates and limits
// come from the server (the page's config block); the browser test compares this file with
// the Rust code on thousands of cases.

/** The server's message `key` with its placeholders filled as Rust would format the values. */
function message(templates, key, values) {
  return templates[key].replace(/\{(\w+)(?::\.(\d+))?\}/g, (whole, name, decimals) => {
    if (!(name in values)) return whole;
    const value = values[name];
    if (typeof value === "string") return value;
    return decimals === undefined ? rustDisplay(value) : rustFixed(value, Number(decimals));
  });
}

/** `format!("{}", x)` of a Rust f64 or integer: shortest round-trip digits, never an exponent. */
function rustDisplay(x) {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (Object.is(x, -0)) return "-0";
  const text = String(x);
  const m = /^(-?)(\d)(?:\.(\d+))?e([+-]\d+)$/.exec(text);
  if (!m) return text;
  const [, sign, lead, fraction = "", exp] = m;
  const e = Number(exp);
  return e > 0
    ? sign + lead + fraction + "0".repeat(e - fraction.length)
    : sign + "0." + "0".repeat(-e - 1) + lead + fraction;
}

/** `format!("{:.N}", x)`: rounded on the exact binary value, ties to even (JS rounds ties up). */
function rustFixed(x, decimals) {
  const up = x.toFixed(decimals);
  const exact = x.toFixed(100);
  const point = exact.indexOf(".");
  if (point < 0 || !/^50*$/.test(exact.slice(point + 1 + decimals))) return up;
  const down = exact.slice(0, decimals > 0 ? point + 1 + decimals : point);
  return Number(down.at(-1)) % 2 === 0 ? down : up;
}

/** `round(length × ratio)`, half away from zero (Rust's `f64::round`). */
function scaled(length, ratio) {
  return Math.round(length * ratio);
}

/** One axis of the simple form: (pixels before, pixels after). */
function splitAxis(length, ratio, before, after) {
  if (!before && !after) return [0, 0];
  const added = Math.max(0, scaled(length, ratio) - length);
  if (before && after) return [Math.floor(added / 2), added - Math.floor(added / 2)];
  return before ? [added, 0] : [0, added];
}

/**
 * Checks the expansion's own rules (`Expansion::uniform` / `Expansion::per_side`); null when
 * they hold, else the server's message. `expansion` is
 * `{form: "uniform", sides: {top, bottom, left, right}, ratio}` or
 * `{form: "per_side", up, down, left, right}`.
 */
export function checkExpansion(expansion, config) {
  const t = config.messages;
  if (expansion.form === "uniform") {
    const r = expansion.ratio;
    if (!(Number.isFinite(r) && r > 1 && r <= 3)) {
      return message(t, "ratio_out_of_range", {
        field: "expansion_ratio", value: r, range: config.ranges.uniform,
      });
    }
    const s = expansion.sides;
    if (!(s.top || s.bottom || s.left || s.right)) return t.empty_direction;
    return null;
  }
  for (const side of ["up", "down", "left", "right"]) {
    const r = expansion[side];
    if (!(Number.isFinite(r) && r >= 0 && r <= 2)) {
      return message(t, "ratio_out_of_range", {
        field: `${side}_expansion_ratio`, value: r, range: config.ranges.per_side,
      });
    }
  }
  return null;
}

/** Pixels added on each side of a `width × height` original (`Expansion::padding`). */
export function padding(width, height, expansion) {
  if (expansion.form === "uniform") {
    const { sides, ratio } = expansion;
    const [top, bottom] = splitAxis(height, ratio, sides.top, sides.bottom);
    const [left, right] = splitAxis(width, ratio, sides.left, sides.right);
    return { top, bottom, left, right };
  }
  return {
    top: scaled(height, expansion.up),
    bottom: scaled(height, expansion.down),
    left: scaled(width, expansion.left),
    right: scaled(width, expansion.right),
  };
}

/**
 * The server's `plan()`, after the expansion's own checks: `{ok: true, width, height,
 * padding}` or `{ok: false, message}`.
 */
export function plan(width, height, expansion, config) {
  const fail = (message) => ({ ok: false, message });
  const bad = checkExpansion(expansion, config);
  if (bad) return fail(bad);
  const t = config.messages;
  const limits = config.limits;
  if (width < limits.min_side || height < limits.min_side) {
    return fail(message(t, "image_too_small", { width, height, min: limits.min_side }));
  }
  const ratio = Math.max(width, height) / Math.min(width, height);
  if (ratio > limits.max_aspect) {
    return fail(message(t, "aspect_ratio", { width, height, ratio, max: limits.max_aspect }));
  }
  const pad = padding(width, height, expansion);
  if (pad.top + pad.bottom + pad.left + pad.right === 0) {
    return fail(message(t, "no_growth", { width, height }));
  }
  const canvasWidth = width + pad.left + pad.right;
  const canvasHeight = height + pad.top + pad.bottom;
  const pixels = canvasWidth * canvasHeight;
  const area = pixels / (width * height);
  if (area > limits.max_area_ratio + 1e-9) {
    return fail(message(t, "canvas_area_ratio", {
      width: canvasWidth, height: canvasHeight, ratio: area, max: limits.max_area_ratio,
    }));
  }
  if (pixels > limits.max_canvas_pixels) {
    return fail(message(t, "canvas_too_large", {
      width: canvasWidth, height: canvasHeight, pixels, max_pixels: limits.max_canvas_pixels,
    }));
  }
  return { ok: true, width: canvasWidth, height: canvasHeight, padding: pad };
}

/**
 * The checks the server makes on the file before planning: its size as the server estimates
 * it from the base64 the page sends (3 bytes per 4 characters, padding included), then the
 * pixel count of the header. Null when they pass.
 */
export function checkFile(size, width, height, config) {
  const t = config.messages;
  const limits = config.limits;
  const estimated = 3 * Math.ceil(size / 3);
  if (estimated > limits.max_file_bytes) {
    return message(t, "file_too_large", {
      bytes: estimated, max: limits.max_file_bytes, max_mib: limits.max_file_bytes / (1024 * 1024),
    });
  }
  const pixels = width * height;
  if (pixels > limits.max_canvas_pixels) {
    return message(t, "image_too_large", {
      width, height, megapixels: pixels / 1e6, max_megapixels: limits.max_canvas_pixels / 1e6,
    });
  }
  return null;
}

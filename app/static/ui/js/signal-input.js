// A signal from a user's file (.npy, or CSV/text) or pasted numbers, as the API takes it: a list
// of numbers, or a list of channels (channels first).

const NPY_MAGIC = "\x93NUMPY";

// Little-endian (or single-byte) numeric dtypes -> how to read one value.
const READERS = {
  f4: [4, (view, at) => view.getFloat32(at, true)],
  f8: [8, (view, at) => view.getFloat64(at, true)],
  i1: [1, (view, at) => view.getInt8(at)],
  i2: [2, (view, at) => view.getInt16(at, true)],
  i4: [4, (view, at) => view.getInt32(at, true)],
  i8: [8, (view, at) => Number(view.getBigInt64(at, true))],
  u1: [1, (view, at) => view.getUint8(at)],
  u2: [2, (view, at) => view.getUint16(at, true)],
  u4: [4, (view, at) => view.getUint32(at, true)],
  u8: [8, (view, at) => Number(view.getBigUint64(at, true))],
};

// The header's Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3,)}
function headerField(header, name) {
  const match = header.match(new RegExp(`'${name}'\\s*:\\s*('[^']*'|True|False|\\([^)]*\\))`));
  if (!match) throw new Error(`.npy header has no '${name}'`);
  return match[1];
}

// An .npy file (format versions 1 to 3) of shape (L,), (B, L) or (B, C, L), as the API reads
// .npy bodies: {signal: the first signal, count: B}.
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  if (String.fromCharCode(...bytes.subarray(0, 6)) !== NPY_MAGIC) {
    throw new Error("not an .npy file (no \\x93NUMPY magic)");
  }
  const view = new DataView(buffer);
  const major = bytes[6];
  const wide = major >= 2; // versions 2 and 3 have a 4-byte header length
  const headerLength = wide ? view.getUint32(8, true) : view.getUint16(8, true);
  const start = wide ? 12 : 10;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLength));
  const descr = headerField(header, "descr").slice(1, -1);
  if (headerField(header, "fortran_order") !== "False") {
    throw new Error(".npy in Fortran order: save it with C order");
  }
  const shape = headerField(header, "shape").slice(1, -1).split(",").filter((s) => s.trim())
    .map(Number);
  const byteOrder = descr[0];
  const reader = READERS[descr.slice(1)];
  if (!reader || byteOrder === ">" || (byteOrder === "|" && reader[0] > 1)) {
    throw new Error(`.npy dtype ${descr} is not a little-endian number type`);
  }
  if (shape.length < 1 || shape.length > 3 || shape.includes(0)) {
    throw new Error(`.npy shape (${shape.join(", ")}) is not (L,), (B, L) or (B, C, L)`);
  }
  const [size, read] = reader;
  const dataStart = start + headerLength;
  const length = shape[shape.length - 1];
  const channels = shape.length === 3 ? shape[1] : 1;
  const at = (r, i) => dataStart + (r * length + i) * size;
  const row = (r) => Array.from({ length }, (_, i) => read(view, at(r, i)));
  const signal = shape.length === 3 ? Array.from({ length: channels }, (_, c) => row(c)) : row(0);
  return { signal, count: shape.length === 1 ? 1 : shape[0] };
}

// Numbers separated by commas, semicolons, tabs or spaces, one sample per line or all on one
// line; several numbers on every line are channels (columns). Of several lines, a first one
// that is not numbers is a header and is skipped.
export function parseText(text) {
  const rows = text.split(/\r?\n/).map((line) => line.trim()).filter(Boolean)
    .map((line) => line.split(/[\s,;]+/).filter(Boolean));
  if (rows.length > 1 && rows[0].some((cell) => Number.isNaN(Number(cell)))) rows.shift();
  if (rows.length === 0) throw new Error("no numbers found");
  const values = rows.map((cells, r) => cells.map((cell) => {
    const number = Number(cell);
    if (cell === "" || !Number.isFinite(number)) {
      throw new Error(`line ${r + 1}: '${cell}' is not a finite number`);
    }
    return number;
  }));
  if (rows.length === 1) return values[0];
  const width = values[0].length;
  if (values.some((cells) => cells.length !== width)) {
    throw new Error("lines hold different numbers of values: give one channel per column");
  }
  if (width === 1) return values.map((cells) => cells[0]);
  return Array.from({ length: width }, (_, c) => values.map((cells) => cells[c]));
}

// A File chosen or dropped: .npy by its magic bytes, anything else as text.
export async function readFile(file) {
  const buffer = await file.arrayBuffer();
  const head = String.fromCharCode(...new Uint8Array(buffer.slice(0, 6)));
  if (head === NPY_MAGIC) return parseNpy(buffer);
  return { signal: parseText(new TextDecoder().decode(buffer)), count: 1 };
}

// What every page of the viewer and console shares: requests to the node (with the signed-in
// user's credentials), DICOM JSON values, multipart/related bodies, small DOM helpers.
// Plain ES module, no build step: the node serves it as it is.

export const BASE = "/dicom-web";
const AUTH_KEY = "dicomnode.auth";

export function authHeader() {
  return sessionStorage.getItem(AUTH_KEY);
}

export function signIn(value) {
  sessionStorage.setItem(AUTH_KEY, value);
}

export function signOut() {
  sessionStorage.removeItem(AUTH_KEY);
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// fetch() with the user's credentials; a 401 sends the page to the sign-in page (and back after)
export async function request(url, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("X-Dicomnode-Login", "form");
  const auth = authHeader();
  if (auth) headers.set("Authorization", auth);
  const response = await fetch(url, { ...options, headers });
  if (response.status === 401) {
    const scheme = /bearer/i.test(response.headers.get("WWW-Authenticate") || "") ? "bearer" : "basic";
    if (auth) signOut();
    const next = location.pathname;
    location.assign(`/login?scheme=${scheme}&next=${encodeURIComponent(next)}`);
    throw new HttpError(401, "sign-in needed");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.clone().json();
      if (body && body.error) message = body.error;
    } catch (_) {
      /* not JSON: the status line says it */
    }
    throw new HttpError(response.status, message);
  }
  return response;
}

export async function json(url, options) {
  const r = await request(url, { ...(options || {}), headers: { Accept: "application/json", ...((options || {}).headers || {}) } });
  return r.status === 204 ? [] : r.json();
}

// -- DICOM JSON (PS3.18 F.2) -------------------------------------------------------------------

export const TAG = {
  PatientName: "00100010", PatientID: "00100020", PatientBirthDate: "00100030", PatientSex: "00100040",
  StudyInstanceUID: "0020000D", StudyDate: "00080020", StudyTime: "00080030", StudyDescription: "00081030",
  AccessionNumber: "00080050", ModalitiesInStudy: "00080061", NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208", SourceApplicationEntityTitle: "00020016",
  SeriesInstanceUID: "0020000E", SeriesNumber: "00200011", SeriesDescription: "0008103E", Modality: "00080060",
  NumberOfSeriesRelatedInstances: "00201209", SOPInstanceUID: "00080018", SOPClassUID: "00080016",
  InstanceNumber: "00200013", NumberOfFrames: "00280008", Rows: "00280010", Columns: "00280011",
  BitsAllocated: "00280100", BitsStored: "00280101", HighBit: "00280102", PixelRepresentation: "00280103",
  SamplesPerPixel: "00280002", PhotometricInterpretation: "00280004", RescaleSlope: "00281053",
  RescaleIntercept: "00281052", RescaleType: "00281054", WindowCenter: "00281050", WindowWidth: "00281051",
  VOILUTFunction: "00281056", VOILUTSequence: "00283010", ModalityLUTSequence: "00283000",
  PixelSpacing: "00280030", ImagerPixelSpacing: "00181164", ImagePositionPatient: "00200032",
  ImageOrientationPatient: "00200037", SliceLocation: "00201041", SliceThickness: "00180050",
  FrameTime: "00181063", CineRate: "00180040", RecommendedDisplayFrameRate: "00082144",
  PerFrameFunctionalGroupsSequence: "52009230", SharedFunctionalGroupsSequence: "52009229",
  PixelMeasuresSequence: "00289110", PlanePositionSequence: "00209113", PixelValueTransformationSequence: "00289145",
  FrameVOILUTSequence: "00289132", TransferSyntaxUID: "00020010", FloatPixelData: "7FE00008",
  DoubleFloatPixelData: "7FE00009", PixelPaddingValue: "00280120",
};

export function values(ds, tag) {
  const e = ds && ds[tag];
  return e && Array.isArray(e.Value) ? e.Value : [];
}

export function value(ds, tag, fallback = undefined) {
  const v = values(ds, tag);
  return v.length ? v[0] : fallback;
}

export function number(ds, tag, fallback = undefined) {
  const v = value(ds, tag);
  const n = typeof v === "number" ? v : parseFloat(v);
  return Number.isFinite(n) ? n : fallback;
}

export function numbers(ds, tag) {
  return values(ds, tag).map((v) => (typeof v === "number" ? v : parseFloat(v))).filter(Number.isFinite);
}

export function text(ds, tag) {
  const v = values(ds, tag);
  return v.map((x) => (x && typeof x === "object" ? personName(x) : String(x ?? ""))).join("\\");
}

export function personName(pn) {
  const a = (pn && (pn.Alphabetic || pn.Ideographic || pn.Phonetic)) || "";
  const [family, given, middle, prefix, suffix] = a.split("^");
  return [prefix, given, middle, family, suffix].filter(Boolean).join(" ") || a;
}

export function item(ds, tag, index = 0) {
  const v = values(ds, tag);
  return v[index] || null;
}

export function formatDate(da) {
  return da && da.length >= 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da || "";
}

export function formatTime(tm) {
  return tm && tm.length >= 4 ? `${tm.slice(0, 2)}:${tm.slice(2, 4)}` : tm || "";
}

// -- multipart/related (PS3.18 8.7.1.2): the first part's body, as bytes ---------------------------

export function firstPart(buffer, contentType) {
  const m = /boundary="?([^";]+)"?/i.exec(contentType || "");
  const bytes = new Uint8Array(buffer);
  if (!m) return bytes;
  const delimiter = new TextEncoder().encode("--" + m[1]);
  const start = indexOf(bytes, delimiter, 0);
  if (start < 0) throw new Error("multipart body without its boundary");
  const headersEnd = indexOf(bytes, new Uint8Array([13, 10, 13, 10]), start);
  if (headersEnd < 0) throw new Error("multipart part without headers");
  const bodyStart = headersEnd + 4;
  const next = indexOf(bytes, new TextEncoder().encode("\r\n--" + m[1]), bodyStart);
  return bytes.subarray(bodyStart, next < 0 ? bytes.length : next);
}

function indexOf(haystack, needle, from) {
  const first = needle[0];
  const last = haystack.length - needle.length;
  outer: for (let i = haystack.indexOf(first, from); i !== -1 && i <= last; i = haystack.indexOf(first, i + 1)) {
    for (let j = 1; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

// -- DOM --------------------------------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function markNav(page) {
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === page) a.setAttribute("aria-current", "page");
  }
  const who = document.getElementById("who");
  if (who && authHeader()) {
    who.append(el("button", { type: "button", class: "link", text: "Sign out", onclick: () => { signOut(); location.assign("/"); } }));
  }
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function download(blob, name) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

//! hftpipe's compiled core: the rolling-window metrics engine of
//! `hftpipe_workers.metrics.MetricsEngine.update_columns`, ported operation for
//! operation so that it gives the same bits (see that module's docstring for the
//! definitions and the numerics). The Python engine is the reference: the tests hold
//! the two equal bit for bit, and a snapshot written by one restores in the other.
//!
//! What makes the port exact:
//! - every float operation is the same IEEE double operation in the same order
//!   (Rust never contracts `a * b + c` into a fused multiply-add, nor reassociates);
//! - `math.fsum` is CPython's algorithm (Shewchuk's partials, then its half-even
//!   fix-up), so its results are correctly rounded like Python's;
//! - `math.log1p` is the C library's `log1p`, which is what `f64::ln_1p` calls.
//!
//! It also writes the producer's bar and trade messages (`encode_records`), byte for byte
//! as `hftpipe_workers.codec` (orjson) writes them, a slice of bars per call.
//!
//! Python's errors are kept where Python raises: a float division by zero raises
//! ZeroDivisionError, a log of a non-positive ratio ValueError (the codec rejects
//! such bars before they get here).

use std::collections::HashMap;

use pyo3::exceptions::{PyOverflowError, PyValueError, PyZeroDivisionError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

const NS_PER_DAY: i64 = 86_400 * 1_000_000_000;
const RECOMPUTE_RATIO: i64 = 4;
const RECOMPUTE_SLACK: i64 = 32;
const M2_BUDGET: f64 = 1e-4;
const COMPACT_MIN: usize = 1024;
const STALE: i64 = -1;
const SESSION: i64 = -1; // a window length of -1 marks the session window
const SNAPSHOT_FORMAT: &str = "hftpipe.metrics-state";
const SNAPSHOT_VERSION: i64 = 1;

// ---------------------------------------------------------------------------------
// math.fsum, as CPython 3.11 computes it (Modules/mathmodule.c, math_fsum).

struct Fsum {
    partials: Vec<f64>,
}

impl Fsum {
    fn new() -> Self {
        Fsum {
            partials: Vec::with_capacity(32),
        }
    }

    fn sum<I: IntoIterator<Item = f64>>(&mut self, values: I) -> PyResult<f64> {
        let p = &mut self.partials;
        p.clear();
        let mut special_sum = 0.0_f64;
        let mut inf_sum = 0.0_f64;
        for value in values {
            let mut x = value;
            let xsave = x;
            let mut i = 0;
            for j in 0..p.len() {
                let mut y = p[j];
                if x.abs() < y.abs() {
                    std::mem::swap(&mut x, &mut y);
                }
                let hi = x + y;
                let yr = hi - x;
                let lo = y - yr;
                if lo != 0.0 {
                    p[i] = lo;
                    i += 1;
                }
                x = hi;
            }
            p.truncate(i);
            if x != 0.0 {
                if !x.is_finite() {
                    if xsave.is_finite() {
                        return Err(PyOverflowError::new_err("intermediate overflow in fsum"));
                    }
                    if xsave.is_infinite() {
                        inf_sum += xsave;
                    }
                    special_sum += xsave;
                    p.clear();
                } else {
                    p.push(x);
                }
            }
        }
        if special_sum != 0.0 {
            if inf_sum.is_nan() {
                return Err(PyValueError::new_err("-inf + inf in fsum"));
            }
            return Ok(special_sum);
        }
        let mut hi = 0.0_f64;
        let mut n = p.len();
        if n > 0 {
            n -= 1;
            hi = p[n];
            let mut lo = 0.0_f64;
            while n > 0 {
                let x = hi;
                n -= 1;
                let y = p[n];
                hi = x + y;
                let yr = hi - x;
                lo = y - yr;
                if lo != 0.0 {
                    break;
                }
            }
            if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
                let y = lo * 2.0;
                let x = hi + y;
                let yr = x - hi;
                if y == yr {
                    hi = x;
                }
            }
        }
        Ok(hi)
    }

    /// The exact sum as a double-double: the rounded sum and what rounding left out.
    fn sum_dd(&mut self, values: &[f64]) -> PyResult<(f64, f64)> {
        let hi = self.sum(values.iter().copied())?;
        let lo = self.sum(values.iter().copied().chain(std::iter::once(-hi)))?;
        Ok((hi, lo))
    }
}

/// Python's float division: ZeroDivisionError for a zero divisor.
#[inline(always)]
fn div(a: f64, b: f64) -> PyResult<f64> {
    if b == 0.0 {
        return Err(PyZeroDivisionError::new_err("float division by zero"));
    }
    Ok(a / b)
}

/// Python's math.log1p: ValueError where the result is undefined.
#[inline(always)]
fn log1p(x: f64) -> PyResult<f64> {
    let r = x.ln_1p();
    if !x.is_nan() && (r.is_nan() || (r.is_infinite() && x.is_finite())) {
        return Err(PyValueError::new_err("math domain error"));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------
// State

/// One window's running state (Python: the list indexed by _START.._OPS).
#[derive(Clone, Copy, Default)]
struct Win {
    start: usize,
    nv: i64,
    vs: f64,
    vc: f64,
    ps: f64,
    pc: f64,
    shift: f64,
    mean: f64,
    m2: f64,
    em2: f64,
    rshift: f64,
    rmean: f64,
    rm2: f64,
    erm2: f64,
    ops: i64,
}

impl Win {
    fn floats(&self) -> [f64; 12] {
        [
            self.vs,
            self.vc,
            self.ps,
            self.pc,
            self.shift,
            self.mean,
            self.m2,
            self.em2,
            self.rshift,
            self.rmean,
            self.rm2,
            self.erm2,
        ]
    }
}

/// The retained bars of one symbol and the running state of its windows.
struct Sym {
    ts: Vec<i64>,
    tpv: Vec<f64>,
    vol: Vec<f64>,
    cl: Vec<f64>,
    ret: Vec<f64>,
    last_ts: i64,
    last_seq: i64, // seq of the last trade (trades only: see update_trades)
    has_prev: bool,
    prev_close: f64,
    has_r: bool,
    last_r: f64,
    run_c: i64,
    run_r: i64,
    wins: Vec<Win>,
}

impl Sym {
    fn new(n_windows: usize) -> Self {
        Sym {
            ts: Vec::new(),
            tpv: Vec::new(),
            vol: Vec::new(),
            cl: Vec::new(),
            ret: Vec::new(),
            last_ts: i64::MIN,
            last_seq: -1,
            has_prev: false,
            prev_close: 0.0,
            has_r: false,
            last_r: 0.0,
            run_c: 0,
            run_r: 0,
            wins: vec![Win::default(); n_windows],
        }
    }

    fn head(&self) -> usize {
        if self.ts.is_empty() {
            0
        } else {
            self.wins.iter().map(|w| w.start).min().unwrap_or(0)
        }
    }

    /// Set window `w`'s sums exactly from its bars `w.start..=end`.
    fn recompute(
        &self,
        w: &mut Win,
        end: usize,
        fs: &mut Fsum,
        buf: &mut Vec<f64>,
    ) -> PyResult<()> {
        let start = w.start;
        let shift = self.cl[end];
        buf.clear();
        buf.extend(self.cl[start..=end].iter().map(|&x| x - shift));
        let n = buf.len();
        let mean = div(fs.sum(buf.iter().copied())?, n as f64)?;
        w.shift = shift;
        w.mean = mean;
        w.m2 = fs.sum(buf.iter().map(|&x| (x - mean) * (x - mean)))?;
        w.em2 = 0.0;
        let rshift = self.ret[end];
        buf.clear();
        buf.extend(self.ret[start + 1..=end].iter().map(|&x| x - rshift));
        w.rshift = rshift;
        if buf.is_empty() {
            w.rmean = 0.0;
            w.rm2 = 0.0;
        } else {
            let rmean = div(fs.sum(buf.iter().copied())?, buf.len() as f64)?;
            w.rmean = rmean;
            w.rm2 = fs.sum(buf.iter().map(|&x| (x - rmean) * (x - rmean)))?;
        }
        w.erm2 = 0.0;
        let vols = &self.vol[start..=end];
        w.nv = vols.iter().filter(|&&x| x > 0.0).count() as i64;
        (w.vs, w.vc) = fs.sum_dd(vols)?;
        (w.ps, w.pc) = fs.sum_dd(&self.tpv[start..=end])?;
        w.ops = 0;
        Ok(())
    }

    /// Drop bars that no window holds any more, once enough have expired.
    fn compact(&mut self) {
        let head = self.wins.iter().map(|w| w.start).min().unwrap_or(0);
        if head >= COMPACT_MIN && 2 * head >= self.ts.len() {
            self.ts.drain(..head);
            self.tpv.drain(..head);
            self.vol.drain(..head);
            self.cl.drain(..head);
            self.ret.drain(..head);
            for w in &mut self.wins {
                w.start -= head;
            }
        }
    }
}

/// One window's metrics for a run of bars, as columns.
#[derive(Default)]
struct Columns {
    n: Vec<i64>,
    volume: Vec<f64>,
    vwap: Vec<Option<f64>>,
    sma: Vec<f64>,
    std: Vec<Option<f64>>,
    rstd: Vec<Option<f64>>,
}

type ColumnsTuple = (
    Vec<i64>,
    Vec<f64>,
    Vec<Option<f64>>,
    Vec<f64>,
    Vec<Option<f64>>,
    Vec<Option<f64>>,
);

/// Window `w`'s metrics for the bars at list indices `first` onwards; the loop of
/// `MetricsEngine._window_columns`, operation for operation.
#[allow(clippy::too_many_arguments)]
fn window_columns(
    st: &Sym,
    w_in: &mut Win,
    length: i64,
    first: usize,
    runs_c: &[i64],
    runs_r: &[i64],
    fs: &mut Fsum,
    buf: &mut Vec<f64>,
) -> PyResult<Columns> {
    let (ts_l, tpv_l, vol_l, cl_l, ret_l) = (&st.ts, &st.tpv, &st.vol, &st.cl, &st.ret);
    let count = ts_l.len() - first;
    let mut out = Columns {
        n: Vec::with_capacity(count),
        volume: Vec::with_capacity(count),
        vwap: Vec::with_capacity(count),
        sma: Vec::with_capacity(count),
        std: Vec::with_capacity(count),
        rstd: Vec::with_capacity(count),
    };
    let mut w = *w_in;
    let mut prev_t = if first > 0 { ts_l[first - 1] } else { 0 };
    for (k, i) in (first..ts_l.len()).enumerate() {
        let (t, c, v, tpv, r) = (ts_l[i], cl_l[i], vol_l[i], tpv_l[i], ret_l[i]);
        let (run_c, run_r) = (runs_c[k], runs_r[k]);
        let cutoff = if length > 0 {
            t.saturating_sub(length)
        } else {
            t - t.rem_euclid(NS_PER_DAY) - 1
        };
        let n: i64;
        if i == 0 || prev_t <= cutoff {
            // Every earlier bar has left: the window restarts from this bar.
            w = Win {
                start: i,
                nv: if v > 0.0 { 1 } else { 0 },
                vs: v,
                vc: 0.0,
                ps: tpv,
                pc: 0.0,
                shift: c,
                mean: 0.0,
                m2: 0.0,
                em2: 0.0,
                rshift: r,
                rmean: 0.0,
                rm2: 0.0,
                erm2: 0.0,
                ops: 0,
            };
            n = 1;
        } else {
            if w.ops == STALE {
                st.recompute(&mut w, i - 1, fs, buf)?;
            }
            let mut nn = (i - w.start) as i64;
            while ts_l[w.start] <= cutoff {
                let mut x = cl_l[w.start] - w.shift;
                nn -= 1;
                let mut d = x - w.mean;
                w.mean -= div(d, nn as f64)?;
                d *= x - w.mean;
                w.m2 -= d;
                w.em2 += d;
                if nn == 1 {
                    w.rmean = 0.0;
                    w.rm2 = 0.0;
                    w.erm2 = 0.0;
                } else {
                    x = ret_l[w.start + 1] - w.rshift;
                    d = x - w.rmean;
                    w.rmean -= div(d, (nn - 1) as f64)?;
                    d *= x - w.rmean;
                    w.rm2 -= d;
                    w.erm2 += d;
                }
                x = vol_l[w.start];
                if x > 0.0 {
                    w.nv -= 1;
                    if w.nv == 0 {
                        w.vs = 0.0;
                        w.vc = 0.0;
                        w.ps = 0.0;
                        w.pc = 0.0;
                    } else {
                        let s = w.vs - x;
                        let b = s - w.vs;
                        let e = (w.vs - (s - b)) - (x + b) + w.vc;
                        w.vs = s + e;
                        w.vc = e - (w.vs - s);
                        x = tpv_l[w.start];
                        let s = w.ps - x;
                        let b = s - w.ps;
                        let e = (w.ps - (s - b)) - (x + b) + w.pc;
                        w.ps = s + e;
                        w.pc = e - (w.ps - s);
                    }
                }
                w.start += 1;
                w.ops += 1;
            }
            nn += 1;
            n = nn;
            let x = c - w.shift;
            let mut d = x - w.mean;
            w.mean += div(d, n as f64)?;
            d *= x - w.mean;
            w.m2 += d;
            w.em2 += d;
            let x = r - w.rshift;
            if n == 2 {
                w.rmean = x;
                w.rm2 = 0.0;
            } else {
                let mut d = x - w.rmean;
                w.rmean += div(d, (n - 1) as f64)?;
                d *= x - w.rmean;
                w.rm2 += d;
                w.erm2 += d;
            }
            if v > 0.0 {
                w.nv += 1;
                let s = w.vs + v;
                let b = s - w.vs;
                let e = (w.vs - (s - b)) + (v - b) + w.vc;
                w.vs = s + e;
                w.vc = e - (w.vs - s);
                let s = w.ps + tpv;
                let b = s - w.ps;
                let e = (w.ps - (s - b)) + (tpv - b) + w.pc;
                w.ps = s + e;
                w.pc = e - (w.ps - s);
            }
            w.ops += 1;
        }
        if w.ops > RECOMPUTE_RATIO * n + RECOMPUTE_SLACK
            || w.m2 < w.em2 * M2_BUDGET
            || w.rm2 < w.erm2 * M2_BUDGET
        {
            st.recompute(&mut w, i, fs, buf)?;
        }

        out.n.push(n);
        if run_c >= n {
            out.sma.push(c);
            out.std.push(if n > 1 { Some(0.0) } else { None });
        } else {
            out.sma.push(w.shift + w.mean);
            out.std.push(Some(if w.m2 > 0.0 {
                div(w.m2, (n - 1) as f64)?.sqrt()
            } else {
                0.0
            }));
        }
        if n < 3 {
            out.rstd.push(None);
        } else if run_r >= n - 1 {
            out.rstd.push(Some(0.0));
        } else {
            out.rstd.push(Some(if w.rm2 > 0.0 {
                div(w.rm2, (n - 2) as f64)?.sqrt()
            } else {
                0.0
            }));
        }
        if w.nv != 0 {
            let volume = w.vs + w.vc;
            out.volume.push(volume);
            out.vwap.push(Some(div(w.ps + w.pc, volume)?));
        } else {
            out.volume.push(0.0);
            out.vwap.push(None);
        }
        prev_t = t;
    }
    *w_in = w;
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Snapshot JSON, byte for byte as orjson writes the Python engine's document.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn push_b64(out: &mut Vec<u8>, raw: &[u8]) {
    out.push(b'"');
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(v >> 18) as usize & 63]);
        out.push(B64[(v >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            B64[(v >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            B64[v as usize & 63]
        } else {
            b'='
        });
    }
    out.push(b'"');
}

fn push_f64s(out: &mut Vec<u8>, values: &[f64]) {
    let raw: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    push_b64(out, &raw);
}

fn push_i64s(out: &mut Vec<u8>, values: &[i64]) {
    let raw: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    push_b64(out, &raw);
}

/// A JSON string as orjson escapes it: `"`, `\` and control characters only.
fn push_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &byte in text.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            0x00..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 15)]);
            }
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// The decimal digits of `value` (with its sign), written into `buf`: no allocation per
/// number (encoding writes several per message).
fn int_text(value: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

fn push_int(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(int_text(value, &mut [0; 20]));
}

/// A float as orjson writes it: the shortest digits that read back as the same double,
/// in decimal notation for 1e-5 <= |x| < 1e16 (with ".0" when whole), else as
/// `d.ddde+X` / `de-X`; `null` for NaN and infinities. (The tests compare it with orjson.)
fn push_f64(out: &mut Vec<u8>, x: f64, buf: &mut ryu::Buffer) {
    if !x.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    if x == 0.0 {
        out.extend_from_slice(if x.is_sign_negative() {
            b"-0.0"
        } else {
            b"0.0"
        });
        return;
    }
    // Ryu: the shortest digits that round-trip and, of those, the closest to x (what
    // Python's repr and orjson choose; Rust's own `{:e}` sometimes picks another 17th
    // digit), laid out as orjson does but for the exponent's sign: "1e16", not "1e+16".
    let text = buf.format_finite(x).as_bytes();
    match text.iter().position(|&b| b == b'e') {
        Some(at) if text[at + 1] != b'-' => {
            out.extend_from_slice(&text[..=at]);
            out.push(b'+');
            out.extend_from_slice(&text[at + 1..]);
        }
        _ => out.extend_from_slice(text),
    }
}

fn push_opt_f64(out: &mut Vec<u8>, x: Option<f64>, buf: &mut ryu::Buffer) {
    match x {
        Some(x) => push_f64(out, x, buf),
        None => out.extend_from_slice(b"null"),
    }
}

/// The metrics messages of a run of bars of one symbol: byte for byte what
/// `codec.encode_bar_metrics` (orjson) writes for each.
#[allow(clippy::too_many_arguments)]
fn encode_messages<'py>(
    py: Python<'py>,
    version: i64,
    symbol: &str,
    labels: &[String],
    ts: &[i64],
    seq: &[i64],
    close: &[f64],
    volume: &[f64],
    rows: &[usize],
    columns: &[ColumnsTuple],
) -> Vec<Bound<'py, PyBytes>> {
    let mut head = Vec::new();
    head.extend_from_slice(b"{\"sv\":");
    push_int(&mut head, version);
    head.extend_from_slice(b",\"s\":");
    push_str(&mut head, symbol);
    head.extend_from_slice(b",\"t\":");
    let keys: Vec<Vec<u8>> = labels
        .iter()
        .enumerate()
        .map(|(k, label)| {
            let mut key = Vec::new();
            key.extend_from_slice(if k == 0 { b",\"w\":{" } else { b"}," });
            push_str(&mut key, label);
            key.extend_from_slice(b":{\"n\":");
            key
        })
        .collect();
    let mut buf = ryu::Buffer::new();
    let mut out = Vec::with_capacity(128 + 96 * labels.len());
    let mut messages = Vec::with_capacity(rows.len());
    for (b, &j) in rows.iter().enumerate() {
        out.clear();
        out.extend_from_slice(&head);
        push_int(&mut out, ts[j]);
        out.extend_from_slice(b",\"q\":");
        push_int(&mut out, seq[j]);
        out.extend_from_slice(b",\"c\":");
        push_f64(&mut out, close[j], &mut buf);
        out.extend_from_slice(b",\"bv\":");
        push_f64(&mut out, volume[j], &mut buf);
        for (key, (n, vol, vwap, sma, std, rstd)) in keys.iter().zip(columns) {
            out.extend_from_slice(key);
            push_int(&mut out, n[b]);
            out.extend_from_slice(b",\"v\":");
            push_f64(&mut out, vol[b], &mut buf);
            out.extend_from_slice(b",\"vw\":");
            push_opt_f64(&mut out, vwap[b], &mut buf);
            out.extend_from_slice(b",\"ma\":");
            push_f64(&mut out, sma[b], &mut buf);
            out.extend_from_slice(b",\"sd\":");
            push_opt_f64(&mut out, std[b], &mut buf);
            out.extend_from_slice(b",\"rsd\":");
            push_opt_f64(&mut out, rstd[b], &mut buf);
        }
        out.extend_from_slice(if labels.is_empty() {
            b",\"w\":{}}"
        } else {
            b"}}}"
        });
        messages.push(PyBytes::new(py, &out));
    }
    messages
}

/// `ZADD key score member ...` in the Redis protocol (RESP), the score of each member its
/// bar's time in whole milliseconds (floor, as Python's `t // 1_000_000`): the processor's
/// history write, byte for byte what `processor._zadd_command` builds, without a Python
/// object per score.
#[pyfunction]
fn zadd_command<'py>(
    py: Python<'py>,
    key: &[u8],
    ts_ns: Vec<i64>,
    members: Vec<Bound<'py, PyBytes>>,
) -> PyResult<Bound<'py, PyBytes>> {
    if ts_ns.len() != members.len() {
        return Err(PyValueError::new_err(format!(
            "columns of different lengths: ts_ns {}, members {}",
            ts_ns.len(),
            members.len()
        )));
    }
    // Its exact length first, then written straight into the bytes object: the command
    // is megabytes (a slice's messages), and a second copy of it cost as much as the rest.
    let mut buf = [0; 20];
    let len_of = |n: usize, buf: &mut [u8; 20]| int_text(n as i64, buf).len();
    let mut total = 1 + len_of(2 + 2 * members.len(), &mut buf) + 13;
    total += len_of(key.len(), &mut buf) + 2 + key.len() + 2;
    let mut scores = Vec::with_capacity(ts_ns.len());
    for (t, member) in ts_ns.iter().zip(&members) {
        let score = t.div_euclid(1_000_000);
        let digits = int_text(score, &mut buf).len();
        let size = member.as_bytes().len();
        total += 1 + len_of(digits, &mut buf) + 2 + digits + 2;
        total += 1 + len_of(size, &mut buf) + 2 + size + 2;
        scores.push(score);
    }
    PyBytes::new_with(py, total, |out| {
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        let mut buf = [0; 20];
        put(b"*");
        put(int_text((2 + 2 * members.len()) as i64, &mut buf));
        put(b"\r\n$4\r\nZADD\r\n$");
        put(int_text(key.len() as i64, &mut buf));
        put(b"\r\n");
        put(key);
        put(b"\r\n");
        let mut digits = [0; 20];
        for (&score, member) in scores.iter().zip(&members) {
            let member = member.as_bytes();
            let score = int_text(score, &mut digits);
            put(b"$");
            put(int_text(score.len() as i64, &mut buf));
            put(b"\r\n");
            put(score);
            put(b"\r\n$");
            put(int_text(member.len() as i64, &mut buf));
            put(b"\r\n");
            put(member);
            put(b"\r\n");
        }
        debug_assert_eq!(at, total);
        Ok(())
    })
}

/// A numeric column handed over by the buffer protocol (a numpy array of exactly that
/// dtype; a mismatched one is a TypeError, never a silent conversion), copied out: a
/// memcpy of a slice, where a list would cost a Python object per value.
fn column<T: pyo3::buffer::Element + Copy>(
    py: Python<'_>,
    name: &str,
    obj: &Bound<'_, PyAny>,
    n: usize,
) -> PyResult<Vec<T>> {
    let values = pyo3::buffer::PyBuffer::<T>::get(obj)?.to_vec(py)?;
    if values.len() != n {
        return Err(PyValueError::new_err(format!(
            "columns of different lengths: symbol {n}, {name} {}",
            values.len()
        )));
    }
    Ok(values)
}

/// The Kafka values of a run of bars (`kind` None: `codec.encode_bar` of each) or of
/// trades read as bars of one price (`kind` `"t"`: `codec.encode_trade` of each, its
/// price the close, its size the volume), byte for byte as orjson writes them; schema
/// version `version`. The producer's hot path: one call per slice of bars, no Python
/// object per value but the message.
///
/// `symbol`: any iterable of str (a list, a numpy object array); the other columns
/// numpy arrays (int64 ts_ns, seq, line; float64 prices and volume) or any buffer of
/// those types. None when a symbol is not a str, or not valid UTF-8 (a lone
/// surrogate): the Python codec then decides, so the answer is always Python's.
/// (Integers cannot exceed 64 bits here: the columns are int64.)
#[pyfunction]
#[pyo3(signature = (version, kind, symbol, ts_ns, open, high, low, close, volume, seq, line))]
#[allow(clippy::too_many_arguments)]
fn encode_records<'py>(
    py: Python<'py>,
    version: i64,
    kind: Option<&str>,
    symbol: &Bound<'py, PyAny>,
    ts_ns: &Bound<'py, PyAny>,
    open: &Bound<'py, PyAny>,
    high: &Bound<'py, PyAny>,
    low: &Bound<'py, PyAny>,
    close: &Bound<'py, PyAny>,
    volume: &Bound<'py, PyAny>,
    seq: &Bound<'py, PyAny>,
    line: &Bound<'py, PyAny>,
) -> PyResult<Option<Vec<Bound<'py, PyBytes>>>> {
    let mut symbols = Vec::new();
    for item in symbol.try_iter()? {
        let item = item?;
        match item.cast_into::<PyString>() {
            Ok(text) => symbols.push(text),
            Err(_) => return Ok(None),
        }
    }
    let n = symbols.len();
    let ts = column::<i64>(py, "ts_ns", ts_ns, n)?;
    let seq = column::<i64>(py, "seq", seq, n)?;
    let line = column::<i64>(py, "line", line, n)?;
    let close = column::<f64>(py, "close", close, n)?;
    let volume = column::<f64>(py, "volume", volume, n)?;
    // A trade has no open, high or low: only their lengths are checked.
    let ohl = [("open", open), ("high", high), ("low", low)]
        .into_iter()
        .map(|(name, obj)| column::<f64>(py, name, obj, n))
        .collect::<PyResult<Vec<_>>>()?;
    let mut head = Vec::new();
    head.extend_from_slice(b"{\"sv\":");
    push_int(&mut head, version);
    if let Some(kind) = kind {
        head.extend_from_slice(b",\"k\":");
        push_str(&mut head, kind);
    }
    head.extend_from_slice(b",\"s\":");
    let mut buf = ryu::Buffer::new();
    let mut out = Vec::with_capacity(192);
    // The symbol's JSON text, kept while the same str object repeats (a file of one
    // symbol: every row), else written again (cheap: a few bytes).
    let mut last: Option<(*mut pyo3::ffi::PyObject, Vec<u8>)> = None;
    let mut messages = Vec::with_capacity(n);
    for (j, text) in symbols.iter().enumerate() {
        if last.as_ref().is_none_or(|(ptr, _)| *ptr != text.as_ptr()) {
            let Ok(s) = text.to_str() else {
                return Ok(None);
            };
            let mut quoted = Vec::with_capacity(s.len() + 2);
            push_str(&mut quoted, s);
            last = Some((text.as_ptr(), quoted));
        }
        out.clear();
        out.extend_from_slice(&head);
        out.extend_from_slice(&last.as_ref().expect("set above").1);
        out.extend_from_slice(b",\"t\":");
        push_int(&mut out, ts[j]);
        if kind.is_some() {
            out.extend_from_slice(b",\"p\":");
            push_f64(&mut out, close[j], &mut buf);
        } else {
            out.extend_from_slice(b",\"o\":");
            push_f64(&mut out, ohl[0][j], &mut buf);
            out.extend_from_slice(b",\"h\":");
            push_f64(&mut out, ohl[1][j], &mut buf);
            out.extend_from_slice(b",\"l\":");
            push_f64(&mut out, ohl[2][j], &mut buf);
            out.extend_from_slice(b",\"c\":");
            push_f64(&mut out, close[j], &mut buf);
        }
        out.extend_from_slice(b",\"v\":");
        push_f64(&mut out, volume[j], &mut buf);
        out.extend_from_slice(b",\"q\":");
        push_int(&mut out, seq[j]);
        out.extend_from_slice(b",\"ln\":");
        push_int(&mut out, line[j]);
        out.push(b'}');
        messages.push(PyBytes::new(py, &out));
    }
    Ok(Some(messages))
}

/// `orjson.dumps(x)` of a float, for the tests of the formatting.
#[pyfunction]
fn dumps_float<'py>(py: Python<'py>, x: f64) -> Bound<'py, PyBytes> {
    let mut out = Vec::new();
    push_f64(&mut out, x, &mut ryu::Buffer::new());
    PyBytes::new(py, &out)
}

// ---------------------------------------------------------------------------------
// Decoding bar messages: a strict reader of the flat JSON objects the producer writes.
// It answers only for batches it is sure of (every message a flat object of plain
// values, every bar valid); anything else (an escape in a string, a nested value, a
// repeated key, a number beyond 64 bits, a bad bar) returns None, and the Python codec,
// orjson's reading and its checks, decides: so where this answers, it answers as they do.

enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Other, // true, false, null
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.b.get(self.i) == Some(&byte) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn string(&mut self) -> Option<&'a str> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.i;
        loop {
            match *self.b.get(self.i)? {
                b'"' => break,
                b'\\' => return None, // escapes: the Python codec's case
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        self.i += 1;
        Some(text)
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
            self.i += 1;
        }
        self.i - start
    }

    /// A JSON number (its grammar exactly): an integer if it has no fraction or
    /// exponent, else a double, correctly rounded like orjson's.
    fn number(&mut self) -> Option<Value<'a>> {
        let start = self.i;
        self.eat(b'-');
        if self.eat(b'0') {
            if self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
                return None;
            }
        } else if self.digits() == 0 {
            return None;
        }
        let mut float = false;
        if self.eat(b'.') {
            float = true;
            if self.digits() == 0 {
                return None;
            }
        }
        if self.eat(b'e') || self.eat(b'E') {
            float = true;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        if float {
            // orjson refuses a number that overflows a double (1e400): so does this.
            text.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Value::Float)
        } else {
            text.parse::<i64>().ok().map(Value::Int) // beyond i64: the Python codec's case
        }
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match *self.b.get(self.i)? {
            b'"' => self.string().map(Value::Str),
            b't' | b'f' | b'n' => {
                for word in [&b"true"[..], b"false", b"null"] {
                    if self.b[self.i..].starts_with(word) {
                        self.i += word.len();
                        return Some(Value::Other);
                    }
                }
                None
            }
            _ => self.number(),
        }
    }
}

/// One bar message's fields, or None (see above).
struct BarFields<'a> {
    symbol: &'a str,
    ts: i64,
    floats: [f64; 5], // o, h, l, c, v
    seq: i64,
    line: i64,
}

fn read_bar(data: &[u8], version: i64) -> Option<BarFields<'_>> {
    const KEYS: [&str; 10] = ["s", "t", "o", "h", "l", "c", "v", "q", "ln", "sv"];
    let mut seen = [false; 10];
    let mut bar = BarFields {
        symbol: "",
        ts: 0,
        floats: [0.0; 5],
        seq: 0,
        line: 0,
    };
    let mut r = Reader { b: data, i: 0 };
    r.ws();
    if !r.eat(b'{') {
        return None;
    }
    r.ws();
    if !r.eat(b'}') {
        loop {
            r.ws();
            let key = r.string()?;
            r.ws();
            if !r.eat(b':') {
                return None;
            }
            r.ws();
            let value = r.value()?;
            if let Some(k) = KEYS.iter().position(|&x| x == key) {
                if seen[k] {
                    return None; // a repeated key
                }
                seen[k] = true;
                match (k, value) {
                    (0, Value::Str(text)) if !text.is_empty() => bar.symbol = text,
                    (1, Value::Int(t)) if t != i64::MIN => bar.ts = t,
                    (2..=6, Value::Float(x)) => bar.floats[k - 2] = x,
                    (2..=6, Value::Int(x)) => bar.floats[k - 2] = x as f64,
                    (7, Value::Int(q)) => bar.seq = q,
                    (8, Value::Int(line)) => bar.line = line,
                    (9, Value::Int(v)) if v == version => {}
                    _ => return None,
                }
            }
            r.ws();
            if r.eat(b'}') {
                break;
            }
            if !r.eat(b',') {
                return None;
            }
        }
    }
    r.ws();
    if r.i != data.len() || !(seen[..8].iter().all(|&x| x) && seen[9]) {
        return None;
    }
    let [o, h, l, c, v] = bar.floats;
    let valid = bar.floats.iter().all(|x| x.is_finite())
        && o > 0.0
        && h > 0.0
        && l > 0.0
        && c > 0.0
        && v >= 0.0
        && l <= h
        && l <= o
        && o <= h
        && l <= c
        && c <= h;
    valid.then_some(bar)
}

type BarColumnsTuple = (
    Vec<String>,
    Vec<i64>,
    Vec<f64>,
    Vec<f64>,
    Vec<f64>,
    Vec<f64>,
    Vec<f64>,
    Vec<i64>,
    Vec<i64>,
);

/// `codec.decode_bars` of a batch of bar messages as columns (symbol, ts_ns, open, high,
/// low, close, volume, seq, line), if every message is a plain, valid bar of schema
/// `version`; None otherwise (the Python codec then decides, message by message).
#[pyfunction]
fn decode_bars(values: Vec<Bound<'_, PyBytes>>, version: i64) -> Option<BarColumnsTuple> {
    let n = values.len();
    let mut out: BarColumnsTuple = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for value in &values {
        let bar = read_bar(value.as_bytes(), version)?;
        let [o, h, l, c, v] = bar.floats;
        out.0.push(bar.symbol.to_owned());
        out.1.push(bar.ts);
        out.2.push(o);
        out.3.push(h);
        out.4.push(l);
        out.5.push(c);
        out.6.push(v);
        out.7.push(bar.seq);
        out.8.push(bar.line);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------
// Decoding metrics messages (the loader's hot path): the same strict reader, one level
// deeper for the windows object. It answers only when `codec.decode_metrics_columns`
// would (every message well-formed, every one with the same windows in the same order)
// and with the same values; anything it is not sure of (an escape, a repeated key, a
// null kind, a number beyond 64 bits, an unknown nested value) returns None and the
// Python codec decides.

/// One window's fields of one message: n, v, vw, ma, sd, rsd.
struct WindowFields<'a> {
    label: &'a str,
    n: i64,
    volume: f64,
    vwap: Option<f64>,
    sma: f64,
    std: Option<f64>,
    ret_std: Option<f64>,
}

/// One metrics message's fields, or None.
struct MetricsFields<'a> {
    symbol: &'a str,
    ts: i64,
    seq: i64,
    close: f64,
    bar_volume: f64,
    trade: bool,
}

impl<'a> Reader<'a> {
    /// A number (an integer read as a double, as Python's float() does), or None.
    fn float_of(value: Value<'a>) -> Option<f64> {
        match value {
            Value::Float(x) => Some(x),
            Value::Int(x) => Some(x as f64),
            _ => None,
        }
    }

    /// `null` (Some(None)), a number (Some(Some(x))), or None.
    fn opt_float(&mut self) -> Option<Option<f64>> {
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            return Some(None);
        }
        Self::float_of(self.value()?).map(Some)
    }

    /// Key-value pairs of an object, `f` reading each value; false on a syntax error or
    /// when `f` refuses.
    fn object(&mut self, mut f: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.ws();
        if !self.eat(b'{') {
            return None;
        }
        self.ws();
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            if !self.eat(b':') {
                return None;
            }
            self.ws();
            f(self, key)?;
            self.ws();
            if self.eat(b'}') {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn window(&mut self, label: &'a str) -> Option<WindowFields<'a>> {
        const KEYS: [&str; 6] = ["n", "v", "vw", "ma", "sd", "rsd"];
        let mut seen = [false; 6];
        let mut w = WindowFields {
            label,
            n: 0,
            volume: 0.0,
            vwap: None,
            sma: 0.0,
            std: None,
            ret_std: None,
        };
        self.object(|r, key| {
            let Some(k) = KEYS.iter().position(|&x| x == key) else {
                r.value()?; // another field: ignored, as the Python codec does
                return Some(());
            };
            if seen[k] {
                return None; // a repeated key
            }
            seen[k] = true;
            match k {
                0 => match r.value()? {
                    Value::Int(n) => w.n = n,
                    _ => return None,
                },
                1 => w.volume = Self::float_of(r.value()?)?,
                2 => w.vwap = r.opt_float()?,
                3 => w.sma = Self::float_of(r.value()?)?,
                4 => w.std = r.opt_float()?,
                _ => w.ret_std = r.opt_float()?,
            }
            Some(())
        })?;
        seen.iter().all(|&x| x).then_some(w)
    }
}

/// A metrics message's fields and its windows (appended to `windows`), or None.
fn read_metrics<'a>(
    data: &'a [u8],
    version: i64,
    windows: &mut Vec<WindowFields<'a>>,
) -> Option<MetricsFields<'a>> {
    const KEYS: [&str; 8] = ["s", "t", "q", "c", "bv", "w", "sv", "k"];
    let mut seen = [false; 8];
    let mut m = MetricsFields {
        symbol: "",
        ts: 0,
        seq: 0,
        close: 0.0,
        bar_volume: 0.0,
        trade: false,
    };
    let mut r = Reader { b: data, i: 0 };
    r.object(|r, key| {
        let Some(k) = KEYS.iter().position(|&x| x == key) else {
            r.value()?;
            return Some(());
        };
        if seen[k] {
            return None;
        }
        seen[k] = true;
        if k == 5 {
            return r.object(|r, label| {
                if windows.iter().any(|w| w.label == label) {
                    return None; // a repeated window
                }
                let w = r.window(label)?;
                windows.push(w);
                Some(())
            });
        }
        match (k, r.value()?) {
            (0, Value::Str(text)) => m.symbol = text,
            (1, Value::Int(t)) => m.ts = t,
            (2, Value::Int(q)) => m.seq = q,
            (3, value) => m.close = Reader::float_of(value)?,
            (4, value) => m.bar_volume = Reader::float_of(value)?,
            (6, Value::Int(v)) if v == version => {}
            (7, Value::Str("t")) => m.trade = true,
            _ => return None,
        }
        Some(())
    })?;
    r.ws();
    (r.i == data.len() && seen[..7].iter().all(|&x| x)).then_some(m)
}

type WindowColumnsTuple = (
    String,
    Vec<i64>,
    Vec<f64>,
    Vec<Option<f64>>,
    Vec<f64>,
    Vec<Option<f64>>,
    Vec<Option<f64>>,
);

type MetricsColumnsTuple = (
    Vec<String>,
    Vec<i64>,
    Vec<i64>,
    Vec<f64>,
    Vec<f64>,
    Vec<WindowColumnsTuple>,
    Option<Vec<bool>>,
);

/// `codec.decode_metrics_columns` of a batch of metrics messages: (symbol, ts_ns, seq,
/// close, bar_volume, windows, trade), each window (label, n, volume, vwap, sma, std,
/// ret_std) with None for a null, trade None when no message was of a trade; None when
/// not sure (the Python codec then decides).
#[pyfunction]
fn decode_metrics(values: Vec<Bound<'_, PyBytes>>, version: i64) -> Option<MetricsColumnsTuple> {
    let n = values.len();
    let mut out: MetricsColumnsTuple = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::new(),
        None,
    );
    let mut trade = Vec::with_capacity(n);
    let mut windows: Vec<WindowFields<'_>> = Vec::new();
    for (j, value) in values.iter().enumerate() {
        windows.clear();
        let m = read_metrics(value.as_bytes(), version, &mut windows)?;
        if j == 0 {
            out.5 = windows
                .iter()
                .map(|w| {
                    (
                        w.label.to_owned(),
                        Vec::with_capacity(n),
                        Vec::with_capacity(n),
                        Vec::with_capacity(n),
                        Vec::with_capacity(n),
                        Vec::with_capacity(n),
                        Vec::with_capacity(n),
                    )
                })
                .collect();
        }
        if windows.len() != out.5.len() {
            return None; // other windows than the first message's
        }
        for (w, col) in windows.iter().zip(out.5.iter_mut()) {
            if w.label != col.0 {
                return None;
            }
            col.1.push(w.n);
            col.2.push(w.volume);
            col.3.push(w.vwap);
            col.4.push(w.sma);
            col.5.push(w.std);
            col.6.push(w.ret_std);
        }
        out.0.push(m.symbol.to_owned());
        out.1.push(m.ts);
        out.2.push(m.seq);
        out.3.push(m.close);
        out.4.push(m.bar_volume);
        trade.push(m.trade);
    }
    if trade.iter().any(|&t| t) {
        out.6 = Some(trade);
    }
    Some(out)
}

/// `decode_metrics` as native-endian arrays, for the loader to hand to Arrow without a
/// Python object per value: (symbol, ts_ns i64, seq i64, close f64, bar_volume f64,
/// windows, trade u8 or None), each window (label, n i64, volume, vwap, sma, std,
/// ret_std: f64, a null as NaN, which no JSON number can be). A symbol repeated is
/// the same str object. None exactly when `decode_metrics` is None.
#[pyfunction]
fn decode_metrics_arrays<'py>(
    py: Python<'py>,
    values: Vec<Bound<'py, PyBytes>>,
    version: i64,
) -> Option<MetricsArraysTuple<'py>> {
    let cols = decode_metrics(values, version)?;
    let mut interned: HashMap<String, Bound<'py, PyString>> = HashMap::new();
    let symbols = cols
        .0
        .into_iter()
        .map(|s| {
            interned
                .entry(s)
                .or_insert_with_key(|k| PyString::new(py, k))
                .clone()
        })
        .collect();
    let ints = |v: &[i64]| {
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
        PyBytes::new(py, &raw)
    };
    let floats = |v: &[f64]| {
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
        PyBytes::new(py, &raw)
    };
    let nullable = |v: &[Option<f64>]| {
        let raw: Vec<u8> = v
            .iter()
            .flat_map(|x| x.unwrap_or(f64::NAN).to_ne_bytes())
            .collect();
        PyBytes::new(py, &raw)
    };
    let windows = cols
        .5
        .iter()
        .map(|w| {
            (
                w.0.clone(),
                ints(&w.1),
                floats(&w.2),
                nullable(&w.3),
                floats(&w.4),
                nullable(&w.5),
                nullable(&w.6),
            )
        })
        .collect();
    let trade = cols.6.map(|t| {
        let raw: Vec<u8> = t.iter().map(|&x| u8::from(x)).collect();
        PyBytes::new(py, &raw)
    });
    Some((
        symbols,
        ints(&cols.1),
        ints(&cols.2),
        floats(&cols.3),
        floats(&cols.4),
        windows,
        trade,
    ))
}

type WindowArraysTuple<'py> = (
    String,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
);

type MetricsArraysTuple<'py> = (
    Vec<Bound<'py, PyString>>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Vec<WindowArraysTuple<'py>>,
    Option<Bound<'py, PyBytes>>,
);

// ---------------------------------------------------------------------------------
// The Python class

/// The rolling-metrics engine; `hftpipe_workers.metrics.CompiledMetricsEngine` wraps it
/// with the Python engine's interface.
#[pyclass(module = "hftpipe_core._core")]
struct Engine {
    labels: Vec<String>,
    lengths: Vec<i64>,
    names: Vec<String>,
    symbols: Vec<Sym>,
    index: HashMap<String, usize>,
    #[pyo3(get, set)]
    ignored: i64,
    fs: Fsum,
    buf: Vec<f64>,
}

impl Engine {
    fn symbol_index(&mut self, symbol: &str) -> usize {
        if let Some(&at) = self.index.get(symbol) {
            return at;
        }
        let at = self.symbols.len();
        self.symbols.push(Sym::new(self.lengths.len()));
        self.names.push(symbol.to_owned());
        self.index.insert(symbol.to_owned(), at);
        at
    }

    /// Bars (`seq` None, `high` and `low` given) or trades (`seq` given): the loop of
    /// `MetricsEngine._update`.
    fn update(
        &mut self,
        symbol: &str,
        ts_ns: &[i64],
        seq: Option<&[i64]>,
        high_low: Option<(&[f64], &[f64])>,
        close: &[f64],
        volume: &[f64],
    ) -> PyResult<(Vec<usize>, Vec<ColumnsTuple>)> {
        let size = ts_ns.len();
        if close.len() != size || volume.len() != size {
            return Err(PyValueError::new_err(format!(
                "columns of different lengths: ts_ns {size}, close (price) {}, volume (size) {}",
                close.len(),
                volume.len()
            )));
        }
        let at = self.symbol_index(symbol);
        let st = &mut self.symbols[at];
        let first = st.ts.len();
        let mut rows: Vec<usize> = Vec::with_capacity(size);
        let mut runs_c: Vec<i64> = Vec::with_capacity(size);
        let mut runs_r: Vec<i64> = Vec::with_capacity(size);
        let (mut last_ts, mut has_prev, mut prev_close) = (st.last_ts, st.has_prev, st.prev_close);
        let (mut has_r, mut last_r, mut run_c, mut run_r) =
            (st.has_r, st.last_r, st.run_c, st.run_r);
        let mut last_seq = st.last_seq;
        for j in 0..size {
            let t = ts_ns[j];
            match seq {
                None if t <= last_ts => continue,
                Some(q) if t < last_ts || (t == last_ts && q[j] <= last_seq) => continue,
                _ => {}
            }
            let c = close[j];
            let v = volume[j];
            let r;
            if has_prev {
                r = log1p(div(c - prev_close, prev_close)?)?;
                run_c = if c == prev_close { run_c + 1 } else { 1 };
                run_r = if has_r && r == last_r { run_r + 1 } else { 1 };
                has_r = true;
                last_r = r;
            } else {
                r = 0.0; // never used: the first bar has no return
                run_c = 1;
            }
            st.ts.push(t);
            match (seq, high_low) {
                (None, Some((high, low))) => st.tpv.push((high[j] + low[j] + c) / 3.0 * v),
                (Some(q), _) => {
                    st.tpv.push(c * v);
                    last_seq = q[j];
                }
                (None, None) => unreachable!("bars come with high and low"),
            }
            st.vol.push(v);
            st.cl.push(c);
            st.ret.push(r);
            rows.push(j);
            runs_c.push(run_c);
            runs_r.push(run_r);
            last_ts = t;
            has_prev = true;
            prev_close = c;
        }
        (st.last_ts, st.has_prev, st.prev_close) = (last_ts, has_prev, prev_close);
        (st.has_r, st.last_r, st.run_c, st.run_r) = (has_r, last_r, run_c, run_r);
        st.last_seq = last_seq;
        self.ignored += (size - rows.len()) as i64;
        if rows.is_empty() {
            return Ok((rows, Vec::new()));
        }
        let mut columns = Vec::with_capacity(self.lengths.len());
        for k in 0..self.lengths.len() {
            let mut w = st.wins[k];
            let out = window_columns(
                st,
                &mut w,
                self.lengths[k],
                first,
                &runs_c,
                &runs_r,
                &mut self.fs,
                &mut self.buf,
            )?;
            st.wins[k] = w;
            columns.push((out.n, out.volume, out.vwap, out.sma, out.std, out.rstd));
        }
        st.compact();
        Ok((rows, columns))
    }
}

#[pymethods]
impl Engine {
    /// `labels` and `lengths` (ns; -1 for the session window) in the engine's order.
    #[new]
    fn new(labels: Vec<String>, lengths: Vec<i64>) -> PyResult<Self> {
        if labels.len() != lengths.len() || labels.is_empty() {
            return Err(PyValueError::new_err(format!(
                "need one length per window label and at least one window (got {} labels, {} lengths)",
                labels.len(),
                lengths.len()
            )));
        }
        if let Some(bad) = lengths.iter().find(|&&x| x <= 0 && x != SESSION) {
            return Err(PyValueError::new_err(format!(
                "window length {bad} ns: expected a positive length, or -1 for the session window"
            )));
        }
        Ok(Engine {
            labels,
            lengths,
            names: Vec::new(),
            symbols: Vec::new(),
            index: HashMap::new(),
            ignored: 0,
            fs: Fsum::new(),
            buf: Vec::new(),
        })
    }

    /// The symbols seen, in the order they were first seen.
    fn symbol_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// `MetricsEngine.update_columns`: the indices of the processed bars and, per
    /// window, (n_bars, volume, vwap, sma, std, ret_std) as lists.
    fn update_columns(
        &mut self,
        symbol: &str,
        ts_ns: Vec<i64>,
        high: Vec<f64>,
        low: Vec<f64>,
        close: Vec<f64>,
        volume: Vec<f64>,
    ) -> PyResult<(Vec<usize>, Vec<ColumnsTuple>)> {
        if high.len() != ts_ns.len() || low.len() != ts_ns.len() {
            return Err(PyValueError::new_err(format!(
                "columns of different lengths: ts_ns {}, high {}, low {}",
                ts_ns.len(),
                high.len(),
                low.len()
            )));
        }
        self.update(symbol, &ts_ns, None, Some((&high, &low)), &close, &volume)
    }

    /// `update_columns`, but of the metrics only the last processed bar's (one-entry
    /// columns: converting every value to a Python object cost more than computing it),
    /// and the processed bars' metrics messages (`codec.encode_bar_metrics` of each, byte
    /// for byte; schema version `version`).
    fn update_encoded<'py>(
        &mut self,
        py: Python<'py>,
        version: i64,
        symbol: &str,
        ts_ns: Vec<i64>,
        seq: Vec<i64>,
        high: Vec<f64>,
        low: Vec<f64>,
        close: Vec<f64>,
        volume: Vec<f64>,
    ) -> PyResult<(Vec<usize>, Vec<ColumnsTuple>, Vec<Bound<'py, PyBytes>>)> {
        if seq.len() != ts_ns.len() {
            return Err(PyValueError::new_err(format!(
                "columns of different lengths: ts_ns {}, seq {}",
                ts_ns.len(),
                seq.len()
            )));
        }
        if high.len() != ts_ns.len() || low.len() != ts_ns.len() {
            return Err(PyValueError::new_err(format!(
                "columns of different lengths: ts_ns {}, high {}, low {}",
                ts_ns.len(),
                high.len(),
                low.len()
            )));
        }
        let (rows, columns) =
            self.update(symbol, &ts_ns, None, Some((&high, &low)), &close, &volume)?;
        let messages = encode_messages(
            py,
            version,
            symbol,
            &self.labels,
            &ts_ns,
            &seq,
            &close,
            &volume,
            &rows,
            &columns,
        );
        let last = columns
            .into_iter()
            .map(|(n, volume, vwap, sma, std, rstd)| {
                (
                    n.last().copied().into_iter().collect(),
                    volume.last().copied().into_iter().collect(),
                    vwap.last().copied().into_iter().collect(),
                    sma.last().copied().into_iter().collect(),
                    std.last().copied().into_iter().collect(),
                    rstd.last().copied().into_iter().collect(),
                )
            })
            .collect();
        Ok((rows, last, messages))
    }

    /// `MetricsEngine.update_trades`: a trade is a bar whose close and typical price are
    /// its price (tpv = price * size), ignored only when its (time, seq) is not after the
    /// symbol's last (time, last trade's seq).
    fn update_trades(
        &mut self,
        symbol: &str,
        ts_ns: Vec<i64>,
        seq: Vec<i64>,
        price: Vec<f64>,
        size: Vec<f64>,
    ) -> PyResult<(Vec<usize>, Vec<ColumnsTuple>)> {
        if seq.len() != ts_ns.len() {
            return Err(PyValueError::new_err(format!(
                "columns of different lengths: ts_ns {}, seq {}",
                ts_ns.len(),
                seq.len()
            )));
        }
        self.update(symbol, &ts_ns, Some(&seq), None, &price, &size)
    }
    /// The whole state as the Python engine's snapshot document, byte for byte.
    fn snapshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let retained: usize = self.symbols.iter().map(|s| s.ts.len() - s.head()).sum();
        let mut out: Vec<u8> = Vec::with_capacity(256 + 60 * retained + 400 * self.symbols.len());
        out.extend_from_slice(b"{\"format\":");
        push_str(&mut out, SNAPSHOT_FORMAT);
        out.extend_from_slice(b",\"version\":");
        push_int(&mut out, SNAPSHOT_VERSION);
        out.extend_from_slice(b",\"windows\":[");
        for (k, label) in self.labels.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            push_str(&mut out, label);
        }
        out.extend_from_slice(b"],\"ignored\":");
        push_int(&mut out, self.ignored);
        out.extend_from_slice(b",\"symbols\":{");
        for (k, (name, st)) in self.names.iter().zip(&self.symbols).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            let head = st.head();
            push_str(&mut out, name);
            out.extend_from_slice(b":{\"last_ts\":");
            push_int(&mut out, st.last_ts);
            out.extend_from_slice(b",\"last_seq\":");
            push_int(&mut out, st.last_seq);
            out.extend_from_slice(if st.has_prev {
                b",\"has_prev\":true"
            } else {
                b",\"has_prev\":false"
            });
            out.extend_from_slice(if st.has_r {
                b",\"has_r\":true"
            } else {
                b",\"has_r\":false"
            });
            out.extend_from_slice(b",\"run_c\":");
            push_int(&mut out, st.run_c);
            out.extend_from_slice(b",\"run_r\":");
            push_int(&mut out, st.run_r);
            out.extend_from_slice(b",\"scalars\":");
            push_f64s(&mut out, &[st.prev_close, st.last_r]);
            out.extend_from_slice(b",\"ts\":");
            push_i64s(&mut out, &st.ts[head..]);
            out.extend_from_slice(b",\"tpv\":");
            push_f64s(&mut out, &st.tpv[head..]);
            out.extend_from_slice(b",\"vol\":");
            push_f64s(&mut out, &st.vol[head..]);
            out.extend_from_slice(b",\"cl\":");
            push_f64s(&mut out, &st.cl[head..]);
            out.extend_from_slice(b",\"ret\":");
            push_f64s(&mut out, &st.ret[head..]);
            out.extend_from_slice(b",\"win_int\":[");
            for (k, w) in st.wins.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.push(b'[');
                push_int(&mut out, (w.start - head) as i64);
                out.push(b',');
                push_int(&mut out, w.nv);
                out.push(b',');
                push_int(&mut out, w.ops);
                out.push(b']');
            }
            out.extend_from_slice(b"],\"win_f64\":");
            let floats: Vec<f64> = st.wins.iter().flat_map(|w| w.floats()).collect();
            push_f64s(&mut out, &floats);
            out.push(b'}');
        }
        out.extend_from_slice(b"}}");
        PyBytes::new(py, &out)
    }

    /// Set a symbol's state from a snapshot (decoded by the Python side, which checks
    /// the document); `wins` in the engine's window order: (start, nv, ops, 12 floats).
    #[allow(clippy::too_many_arguments)]
    fn restore_symbol(
        &mut self,
        name: &str,
        last_ts: i64,
        last_seq: i64,
        has_prev: bool,
        has_r: bool,
        run_c: i64,
        run_r: i64,
        prev_close: f64,
        last_r: f64,
        ts: Vec<i64>,
        tpv: Vec<f64>,
        vol: Vec<f64>,
        cl: Vec<f64>,
        ret: Vec<f64>,
        wins: Vec<(i64, i64, i64, Vec<f64>)>,
    ) -> PyResult<()> {
        let size = ts.len();
        if [tpv.len(), vol.len(), cl.len(), ret.len()]
            .iter()
            .any(|&x| x != size)
        {
            return Err(PyValueError::new_err(format!(
                "symbol {name:?}: the retained bars' arrays differ in length"
            )));
        }
        if wins.len() != self.lengths.len() {
            return Err(PyValueError::new_err(format!(
                "symbol {name:?} has state for the wrong number of windows"
            )));
        }
        let mut st = Sym::new(self.lengths.len());
        (st.last_ts, st.has_prev, st.has_r, st.run_c, st.run_r) =
            (last_ts, has_prev, has_r, run_c, run_r);
        (st.prev_close, st.last_r, st.last_seq) = (prev_close, last_r, last_seq);
        (st.ts, st.tpv, st.vol, st.cl, st.ret) = (ts, tpv, vol, cl, ret);
        for (k, (start, nv, ops, f)) in wins.into_iter().enumerate() {
            if f.len() != 12
                || start < 0
                || start as usize > size
                || (size > 0 && start as usize >= size)
            {
                return Err(PyValueError::new_err(format!(
                    "symbol {name:?}, window {k}: bad state (start {start} of {size} bars, {} floats)",
                    f.len()
                )));
            }
            st.wins[k] = Win {
                start: start as usize,
                nv,
                vs: f[0],
                vc: f[1],
                ps: f[2],
                pc: f[3],
                shift: f[4],
                mean: f[5],
                m2: f[6],
                em2: f[7],
                rshift: f[8],
                rmean: f[9],
                rm2: f[10],
                erm2: f[11],
                ops,
            };
        }
        let at = self.symbol_index(name);
        self.symbols[at] = st;
        Ok(())
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_function(wrap_pyfunction!(dumps_float, m)?)?;
    m.add_function(wrap_pyfunction!(decode_bars, m)?)?;
    m.add_function(wrap_pyfunction!(zadd_command, m)?)?;
    m.add_function(wrap_pyfunction!(decode_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(decode_metrics_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(encode_records, m)?)?;
    Ok(())
}

//! JSON exactly as Python's `json.dumps` writes it (separators `", "` and
//! `": "`), with or without `ensure_ascii`. The handshake uses
//! `ensure_ascii=False`; Veltix's `json=` payload helper uses `ensure_ascii=True`.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

/// A `serde_json` formatter reproducing Python's default `json.dumps` layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PyFormatter {
    /// Escape every character outside printable ASCII as `\uXXXX`.
    pub ensure_ascii: bool,
}

impl Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        w.write_all(python_float_repr(f64::from(value)).as_bytes())
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if !self.ensure_ascii || fragment.bytes().all(|b| b < 0x7f) {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if (c as u32) < 0x7f {
                w.write_all(&[c as u8])?;
            } else {
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// `repr(float)` as Python writes it (and so `json.dumps`): the shortest
/// round-trip digits, fixed notation for decimal exponents in `-4..16` (with a
/// `.0` on whole numbers), otherwise `d.ddde±XX` with at least two exponent digits.
pub(crate) fn python_float_repr(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{:e}", v.abs()); // shortest digits: "d.ddde-X"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if v.is_sign_negative() {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    }
    out
}

/// Serializes `value` the way Python's `json.dumps(value, ensure_ascii=...)` does.
pub(crate) fn to_vec_python<T: Serialize + ?Sized>(
    value: &T,
    ensure_ascii: bool,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter { ensure_ascii });
    value.serialize(&mut ser)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_separators() {
        let v = json!({"a": [1, 2], "b": {"c": null}});
        // serde_json's default map is sorted by key.
        assert_eq!(
            String::from_utf8(to_vec_python(&v, false).unwrap()).unwrap(),
            r#"{"a": [1, 2], "b": {"c": null}}"#
        );
    }

    #[test]
    fn floats_like_python_repr() {
        // Expected strings are Python 3.11's repr() of the same values.
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (0.5, "0.5"),
            (0.0001, "0.0001"),
            (9.9e-5, "9.9e-05"),
            (1e-5, "1e-05"),
            (1.5e-6, "1.5e-06"),
            (1.2345e-8, "1.2345e-08"),
            (1e-10, "1e-10"),
            (2.5e-10, "2.5e-10"),
            (5e-324, "5e-324"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (1.5e300, "1.5e+300"),
            (123.456, "123.456"),
            (-3.25e-7, "-3.25e-07"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for &(v, want) in cases {
            assert_eq!(python_float_repr(v), want, "{v:e}");
        }
        assert_eq!(
            String::from_utf8(to_vec_python(&[1e-5, 2.0], true).unwrap()).unwrap(),
            "[1e-05, 2.0]"
        );
    }

    #[test]
    fn ensure_ascii_escapes_like_python() {
        let s = "caf\u{e9} \u{1F600} \u{7f}";
        assert_eq!(
            String::from_utf8(to_vec_python(s, true).unwrap()).unwrap(),
            r#""caf\u00e9 \ud83d\ude00 \u007f""#
        );
        assert_eq!(
            String::from_utf8(to_vec_python(s, false).unwrap()).unwrap(),
            format!("\"{s}\"")
        );
    }
}

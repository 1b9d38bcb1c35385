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

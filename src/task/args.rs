//! A task's arguments as it was spawned with them, kept encoded and printed on demand.

use std::fmt::{self, Write};
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::protocol::chunk::Segments;

/// The longest text [`EncodedArgs::render`] returns, in characters, before it is cut.
const MAX_RENDERED: usize = 256;
/// The most elements of one list or map that are printed.
const MAX_ELEMENTS: usize = 16;

/// How the arguments sit in a `Run` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArgsLayout {
    /// One rmp-serde value.
    Value,
    /// The items of a `map` chunk.
    Chunk,
}

/// The encoded arguments of a task: its `Run` frame, shared with the job that carries it.
#[derive(Clone)]
pub(crate) struct EncodedArgs {
    frame: Arc<Vec<u8>>,
    /// Where the arguments start in `frame`.
    start: usize,
    layout: ArgsLayout,
}

impl EncodedArgs {
    pub(crate) fn new(frame: Arc<Vec<u8>>, start: usize, layout: ArgsLayout) -> Self {
        EncodedArgs {
            frame,
            start,
            layout,
        }
    }

    /// The arguments as text (see [`TaskInfo::args`](crate::TaskInfo::args)).
    pub(crate) fn render(&self) -> String {
        let bytes = self.frame.get(self.start..).unwrap_or_default();
        let mut text = match self.layout {
            ArgsLayout::Value => render_value(bytes),
            ArgsLayout::Chunk => match Segments::new(bytes, false) {
                Ok(items) => {
                    let items: Vec<String> = items
                        .take(MAX_ELEMENTS + 1)
                        .map(|item| item.map_or_else(|e| e, |(_, item)| render_value(item)))
                        .collect();
                    list(&items, '[', ']')
                }
                Err(e) => e,
            },
        };
        if let Some((cut, _)) = text.char_indices().nth(MAX_RENDERED) {
            text.truncate(cut);
            text.push('…');
        }
        text
    }
}

/// Prints one rmp-serde value.
fn render_value(bytes: &[u8]) -> String {
    match rmp_serde::from_slice::<Rendered>(bytes) {
        Ok(Rendered(text)) => text,
        Err(e) => format!("<undecodable: {e}>"),
    }
}

/// Joins `items` between `open` and `close`, cutting after [`MAX_ELEMENTS`].
fn list(items: &[String], open: char, close: char) -> String {
    let mut text = String::from(open);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        if i == MAX_ELEMENTS {
            text.push('…');
            break;
        }
        text.push_str(item);
    }
    text.push(close);
    text
}

/// Any value, printed as it is decoded.
struct Rendered(String);

impl<'de> Deserialize<'de> for Rendered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RenderVisitor).map(Rendered)
    }
}

struct RenderVisitor;

impl<'de> Visitor<'de> for RenderVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E>(self, v: f64) -> Result<String, E> {
        Ok(format!("{v:?}"))
    }
    fn visit_str<E>(self, v: &str) -> Result<String, E> {
        let mut text = String::with_capacity(v.len().min(MAX_RENDERED) + 2);
        let shown: String = v.chars().take(MAX_RENDERED).collect();
        let _ = write!(text, "{shown:?}");
        Ok(text)
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<String, E> {
        Ok(format!("<{} bytes>", v.len()))
    }
    fn visit_unit<E>(self) -> Result<String, E> {
        Ok("()".to_string())
    }
    fn visit_none<E>(self) -> Result<String, E> {
        Ok("None".to_string())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        Rendered::deserialize(d).map(|Rendered(inner)| inner)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        let mut items = Vec::new();
        while items.len() < MAX_ELEMENTS {
            match seq.next_element::<Rendered>()? {
                Some(Rendered(item)) => items.push(item),
                None => return Ok(list(&items, '[', ']')),
            }
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            items.push(String::new()); // shown as the cut
            while seq.next_element::<IgnoredAny>()?.is_some() {}
        }
        Ok(list(&items, '[', ']'))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        let mut items = Vec::new();
        while let Some((Rendered(key), Rendered(value))) = map.next_entry()? {
            if items.len() <= MAX_ELEMENTS {
                items.push(format!("{key}: {value}"));
            }
        }
        Ok(list(&items, '{', '}'))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<String, A::Error> {
        let (Rendered(variant), _) = data.variant::<Rendered>()?;
        Ok(variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::chunk::EncodedItems;

    fn rendered(value: &impl serde::Serialize) -> String {
        let frame = rmp_serde::to_vec(value).unwrap();
        EncodedArgs::new(Arc::new(frame), 0, ArgsLayout::Value).render()
    }

    #[test]
    fn values_print_as_they_were_passed() {
        assert_eq!(rendered(&30u64), "30");
        assert_eq!(rendered(&(1i64, -2i64)), "[1, -2]");
        assert_eq!(
            rendered(&("a", 1.5f64, true, ())),
            r#"["a", 1.5, true, ()]"#
        );
        assert_eq!(rendered(&Some(3u8)), "3");
        assert_eq!(rendered(&None::<u8>), "()");
        assert_eq!(
            rendered(&serde_bytes::ByteBuf::from(vec![0u8; 4096])),
            "<4096 bytes>"
        );
        let long: Vec<u32> = (0..100).collect();
        assert!(rendered(&long).ends_with(", …]"), "{}", rendered(&long));
        let text = "x".repeat(10_000);
        assert!(rendered(&text).chars().count() <= MAX_RENDERED + 1);
    }

    #[test]
    fn chunks_print_their_items() {
        let mut items = EncodedItems::default();
        items.push(&(0u8, 1u8)).unwrap();
        items.push(&(1u8, 2u8)).unwrap();
        let mut frame = vec![9, 9];
        items.write_payload(&mut frame);
        let args = EncodedArgs::new(Arc::new(frame), 2, ArgsLayout::Chunk);
        assert_eq!(args.render(), "[[0, 1], [1, 2]]");
    }

    #[test]
    fn garbage_prints_as_undecodable() {
        let args = EncodedArgs::new(Arc::new(vec![0xc1]), 0, ArgsLayout::Value);
        assert!(args.render().starts_with("<undecodable"));
    }
}

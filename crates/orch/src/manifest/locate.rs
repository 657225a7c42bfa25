//! Where a node of a YAML document is: line and column for semantic errors.
//!
//! serde_yaml reports positions for syntax and type errors only. For errors found after
//! parsing (a duplicate name, a port clash, a cycle), [`locate`] finds the node at a path
//! like `spec.services[2].port` by deserializing the document once more with a probe that
//! walks down the path and fails on purpose at the node: serde_yaml stamps an error raised
//! inside a node with that node's start mark, which is exactly the position wanted.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the document: `spec.services[2].port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePath(pub Vec<Seg>);

impl NodePath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }
}

impl fmt::Display for NodePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) if first => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

const FOUND: &str = "\u{0}orch-locate-found";

/// The position of the node at `path` in `text`, or of its deepest existing ancestor.
pub fn locate(text: &str, path: &NodePath) -> Option<Position> {
    let de = serde_yaml::Deserializer::from_str(text);
    let err = match (Probe { path: &path.0 }).deserialize(de) {
        Ok(()) => return None,
        Err(e) => e,
    };
    err.location().map(|l| Position { line: l.line(), column: l.column() })
}

struct Probe<'p> {
    path: &'p [Seg],
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(wanted), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            let matches = match &key {
                serde_yaml::Value::String(s) => s == wanted,
                other => serde_yaml::to_string(other).is_ok_and(|s| s.trim() == wanted),
            };
            if matches {
                return map.next_value_seed(Probe { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        // Not there: the mapping itself is the nearest place.
        Err(de::Error::custom(FOUND))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(wanted), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        for _ in 0..*wanted {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom(FOUND));
            }
        }
        match seq.next_element_seed(Probe { path: rest })? {
            Some(()) => Ok(()),
            None => Err(de::Error::custom(FOUND)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: orch/v1
spec:
  services:
    - name: registry
      port: 3005
    - { name: auth, port: 3001, dependsOn: [registry, data] }
    - name: data
      env:
        A: b
";

    fn at(path: NodePath) -> (usize, usize) {
        let p = locate(DOC, &path).expect("a position");
        (p.line, p.column)
    }

    #[test]
    fn finds_nodes_by_path() {
        let services = NodePath::root().key("spec").key("services");
        assert_eq!(at(NodePath::root().key("apiVersion")), (1, 13));
        assert_eq!(at(services.index(0).key("port")), (5, 13));
        assert_eq!(at(services.index(0)), (4, 7));
        assert_eq!(at(services.index(1).key("port")), (6, 27));
        assert_eq!(at(services.index(1).key("dependsOn").index(1)), (6, 55));
        assert_eq!(at(services.index(2).key("env").key("A")), (9, 12));
        assert_eq!(services.index(1).key("port").to_string(), "spec.services[1].port");
    }

    #[test]
    fn a_missing_node_gives_its_nearest_ancestor() {
        let services = NodePath::root().key("spec").key("services");
        assert_eq!(at(services.index(2).key("replicas")), (7, 7));
        assert_eq!(at(services.index(9)), (4, 5));
    }
}

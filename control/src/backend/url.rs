//! `--store etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`, parsed.

/// Where a replicated store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// `http://HOST:PORT` of each etcd member.
    pub endpoints: Vec<String>,
    /// Every key the control writes starts with this (default `/strait/`): several meshes can
    /// share one etcd.
    pub prefix: String,
}

/// The prefix when the URL names none.
pub const DEFAULT_PREFIX: &str = "/strait/";

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix("etcd://").ok_or_else(|| {
            format!(
                "`{text}`: want etcd://HOST:PORT[,HOST:PORT...] (the default store is --data-dir)"
            )
        })?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, "")) => (hosts, DEFAULT_PREFIX.to_owned()),
            Some((hosts, path)) => (hosts, format!("/{}/", path.trim_matches('/'))),
            None => (rest, DEFAULT_PREFIX.to_owned()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(|host| {
                let (name, port) = host
                    .rsplit_once(':')
                    .ok_or_else(|| format!("`{host}`: want HOST:PORT"))?;
                if name.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(format!("`{host}`: want HOST:PORT"));
                }
                Ok(format!("http://{host}"))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { endpoints, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_more_members_and_an_optional_prefix() {
        let one: StoreUrl = "etcd://127.0.0.1:2379".parse().unwrap();
        assert_eq!(one.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(one.prefix, "/strait/");
        let three: StoreUrl = "etcd://a:1,b:2,c:3/mesh-a".parse().unwrap();
        assert_eq!(three.endpoints.len(), 3);
        assert_eq!(three.prefix, "/mesh-a/");
        for bad in [
            "http://a:1",
            "etcd://a",
            "etcd://a:0",
            "etcd://:1",
            "etcd://a:1,",
        ] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
    }
}

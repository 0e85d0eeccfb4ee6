//! The `/package.Service/Method` path every gRPC request is addressed to.

/// Splits `/pkg.Service/Method` into (`pkg.Service`, `Method`).
pub fn split(path: &str) -> (&str, &str) {
    let p = path.trim_start_matches('/');
    match p.split_once('/') {
        Some((s, m)) => (s, m),
        None => (p, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            split("/taskrouter.v1.Router/Route"),
            ("taskrouter.v1.Router", "Route")
        );
        assert_eq!(split("/odd"), ("odd", ""));
    }
}

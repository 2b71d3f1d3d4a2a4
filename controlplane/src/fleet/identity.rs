//! Node identity from `/etc/kairos-release` or v1.x `/etc/os-release`.

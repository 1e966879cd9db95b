//! Permission names and patterns (`resource.action`, `email.*`, `*.view`, `*`).

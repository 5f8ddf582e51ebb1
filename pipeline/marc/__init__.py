"""The streaming MARC engine (see docs/formats.md).

Modules: `record` (the shared model), `detect` (containers and format sniffing, decompression caps),
`framing` (cutting a stream into raw records), `marcxml` / `marc21` / `marcjson` (one format each:
reading and writing), `marc8` (strict MARC-8 decoding), `xslt` (per-record stylesheets),
`encoders` (the writers' registry), `sinks` (where encoded records go), `report` (FileResult,
RunReport) and `engine` (Input, process_file, process).
"""

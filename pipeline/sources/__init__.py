"""Where export files come from. `open_source(url)` picks the implementation from the URL
(sftp://, ftp://, ftps://, blob://, https://ACCOUNT.blob.core.windows.net/..., file:///)."""

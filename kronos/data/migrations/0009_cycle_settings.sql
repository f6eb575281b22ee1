-- The hash of the resolved settings a paper cycle ran with (kronos.config.settings_hash),
-- so a cycle's decisions can be traced to the exact settings that made them.
ALTER TABLE paper_cycles ADD COLUMN settings_hash VARCHAR;

-- Every committed batch advances its conversations' `last_seq`. That update changes no
-- indexed column, so PostgreSQL can keep it on the row's own page (a HOT update: no new
-- index entries, dead versions pruned in place) as long as the page has room. Leave
-- that room.
ALTER TABLE conversations SET (fillfactor = 70);

"""What a soup leaves behind: the weight files (:mod:`.files`), ``soup_report.json`` (:mod:`.report`),
the model card (:mod:`.card`, :mod:`.card_metadata`, ``templates/``) and the push to the Hub (:mod:`.push`)."""

"""What hf_soup needs of its dependencies: supported version ranges (:mod:`.versions`) and the one
module that reaches into transformers' internal weight-conversion API (:mod:`.transformers_keys`)."""

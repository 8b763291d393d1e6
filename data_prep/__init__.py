"""Raw sources -> processed DGL heterographs; one builder per raw layout.

* :mod:`data_prep.sources`: public download locations, checksums, mirrors;
* :mod:`data_prep.parsing`: line parsing with file:line errors;
* :mod:`data_prep.kg_ctr`: the KGCN/MKR three-file layout (``lastfm-kg``) and the
  CTR protocol.
"""

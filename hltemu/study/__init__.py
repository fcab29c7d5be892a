"""Studies that compare the HLT with offline reconstruction (``hltemu study``).

* :mod:`~hltemu.study.online_offline`: HLT jets against offline jets on CMS NanoAOD (reading,
  matching, response, path bits, turn-ons); :mod:`~hltemu.study.fits`: its Gaussian-core and
  erf turn-on fits; :mod:`~hltemu.study.online_offline_plots`: its figures;
  :mod:`~hltemu.study.command`: the ``hltemu study`` command group.

On hltemu's own outputs the study needs the offline reconstruction (``pfjets``), which the
emulator does not have yet: it reads real NanoAOD only.
"""

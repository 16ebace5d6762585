"""fv2es-web: a web page next to the FV2ES server (upload a video, see its emotion timeline)."""

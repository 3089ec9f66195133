from django.urls import path

from . import metrics, views

urlpatterns = [
    path("v1/transcribe", views.transcribe),
    path("v1/transcribe/free", views.transcribe_free),
    path("v1/analyze", views.analyze),
    path("healthz", views.healthz),
    path("metrics", metrics.metrics),
]

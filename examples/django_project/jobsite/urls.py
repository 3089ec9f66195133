from django.urls import path

from . import views

urlpatterns = [
    path("v1/transcribe", views.transcribe),
    path("v1/analyze", views.analyze),
    path("healthz", views.healthz),
]
